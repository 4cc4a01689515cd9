/* PNG (libpng), JPEG (libjpeg-turbo) and WebP (libwebp + libwebpmux) behind one decode/encode pair.
 * libpng and libjpeg report errors by longjmp: each codec keeps its state in a struct owned by the
 * caller and does its setjmp in a helper that touches that state only through a pointer, so after
 * a jump the caller still frees everything it allocated. */
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <webp/mux.h>

#define JPEG_MAX_SCANS 500 /* progressive files with more scans are rejected (decode-time bomb) */
#define APP_MAX 65533      /* payload of one JPEG APPn segment */
#define WEBP_MAX_DIM 16383 /* the format's own bound */

static const char XMP_JPEG_ID[] = "http://ns.adobe.com/xap/1.0/"; /* + NUL */
static const char XMP_NS[] = "urn:sdxl:1.0:";

void sdxl_image_limits_init(sdxl_image_limits *l) {
    l->max_bytes = (size_t)64 << 20;
    l->max_width = 8192;
    l->max_height = 8192;
    l->max_pixels = (uint64_t)8192 * 8192;
    l->max_text = (size_t)8 << 20;
    l->alpha = SDXL_ALPHA_DROP;
    l->exif_orientation = 1;
}

void sdxl_image_write_opts_init(sdxl_image_write_opts *o) {
    o->quality = 90;
    o->lossless = 0;
    o->png_compression = 6;
}

sdxl_image_format sdxl_image_sniff(const uint8_t *b, size_t n) {
    if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return SDXL_IMAGE_PNG;
    if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return SDXL_IMAGE_JPEG;
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) return SDXL_IMAGE_WEBP;
    return SDXL_IMAGE_UNKNOWN;
}

sdxl_image_format sdxl_image_format_from_path(const char *path) {
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/')) return SDXL_IMAGE_UNKNOWN;
    if (!strcasecmp(dot, ".png")) return SDXL_IMAGE_PNG;
    if (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg")) return SDXL_IMAGE_JPEG;
    if (!strcasecmp(dot, ".webp")) return SDXL_IMAGE_WEBP;
    return SDXL_IMAGE_UNKNOWN;
}

const char *sdxl_image_format_name(sdxl_image_format f) {
    switch (f) {
    case SDXL_IMAGE_PNG: return "PNG";
    case SDXL_IMAGE_JPEG: return "JPEG";
    case SDXL_IMAGE_WEBP: return "WebP";
    default: return "unknown";
    }
}

void sdxl_image_free(sdxl_image *img) {
    if (!img) return;
    free(img->data);
    memset(img, 0, sizeof *img);
}

/* w * h * c in bytes, or 0 on overflow. */
static size_t img_bytes(int w, int h, int c) {
    if (w <= 0 || h <= 0 || c <= 0) return 0;
    size_t a = (size_t)w, b = (size_t)h, d = (size_t)c;
    if (a > SIZE_MAX / b || a * b > SIZE_MAX / d) return 0;
    return a * b * d;
}

int sdxl_image_alloc(sdxl_image *img, int width, int height, int channels, sdxl_err *e) {
    memset(img, 0, sizeof *img);
    size_t n = img_bytes(width, height, channels);
    if (!n || (channels != 1 && channels != 3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "image: bad size %dx%d with %d channels", width, height, channels);
    img->data = calloc(1, n);
    if (!img->data) return sdxl_seterr(e, SDXL_ERR_NOMEM, "image: cannot allocate %dx%d", width, height);
    img->width = width;
    img->height = height;
    img->channels = channels;
    return SDXL_OK;
}

/* ---- metadata texts ----------------------------------------------------------------------- */

void sdxl_image_meta_free(sdxl_image_meta *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_texts; i++) {
        free(m->texts[i].key);
        free(m->texts[i].value);
    }
    free(m->texts);
    memset(m, 0, sizeof *m);
}

static int meta_add(sdxl_image_meta *m, const char *key, const char *val, size_t vlen) {
    if (!m) return 0;
    sdxl_image_text *t = realloc(m->texts, (m->n_texts + 1) * sizeof *t);
    if (!t) return -1;
    m->texts = t;
    char *k = strdup(key), *v = malloc(vlen + 1);
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    memcpy(v, val, vlen);
    v[vlen] = 0;
    m->texts[m->n_texts].key = k;
    m->texts[m->n_texts].value = v;
    m->n_texts++;
    return 0;
}

static int meta_has(const sdxl_image_meta *m, const char *key) {
    for (size_t i = 0; m && i < m->n_texts; i++)
        if (!strcmp(m->texts[i].key, key)) return 1;
    return 0;
}

static void meta_link(sdxl_image_meta *m) {
    if (!m) return;
    m->parameters = m->request = NULL;
    for (size_t i = 0; i < m->n_texts; i++) {
        if (!m->parameters && !strcmp(m->texts[i].key, "parameters")) m->parameters = m->texts[i].value;
        if (!m->request && !strcmp(m->texts[i].key, "sdxl")) m->request = m->texts[i].value;
    }
}

/* Latin-1 (PNG tEXt/zTXt) to a malloc'd UTF-8 string. */
static char *latin1_to_utf8(const char *s, size_t n, size_t *out_n) {
    if (n > SIZE_MAX / 2 - 1) return NULL;
    char *r = malloc(2 * n + 1), *o = r;
    if (!r) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            *o++ = (char)c;
        } else {
            *o++ = (char)(0xc0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *o = 0;
    *out_n = (size_t)(o - r);
    return r;
}

/* Next code point of UTF-8 at s[*i] (advancing *i); malformed bytes give U+FFFD. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i) {
    unsigned char c = s[*i];
    if (c < 0x80) return (*i)++, c;
    int len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    if (!len || *i + (size_t)len > n) return (*i)++, 0xfffd;
    uint32_t cp = c & (0x3f >> (len - 1));
    for (int k = 1; k < len; k++) {
        if ((s[*i + k] & 0xc0) != 0x80) return (*i)++, 0xfffd;
        cp = (cp << 6) | (s[*i + k] & 0x3f);
    }
    static const uint32_t MIN[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < MIN[len] || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return (*i)++, 0xfffd;
    *i += (size_t)len;
    return cp;
}

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xc0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)), o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---- output buffer ------------------------------------------------------------------------ */

typedef struct obuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} obuf;

static void ob_add(obuf *b, const void *s, size_t len) {
    if (b->oom) return;
    if (len > SIZE_MAX / 2 - b->n) {
        b->oom = 1;
        return;
    }
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
}

static void ob_str(obuf *b, const char *s) { ob_add(b, s, strlen(s)); }
static void ob_u16be(obuf *b, unsigned v) {
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    ob_add(b, x, 2);
}
static void ob_u32be(obuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    ob_add(b, x, 4);
}

/* ---- EXIF --------------------------------------------------------------------------------- */

/* TIFF block (no "Exif\0\0" prefix) with one ExifIFD entry: UserComment = "UNICODE\0" + UTF-16BE
 * of text, big-endian ("MM"), the layout piexif.dump writes for A1111. */
static void exif_build(obuf *b, const char *text) {
    obuf u = {0};
    ob_str(&u, "UNICODE");
    ob_add(&u, "", 1);
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        uint32_t cp = utf8_next(s, n, &i);
        if (cp >= 0x10000) {
            cp -= 0x10000;
            ob_u16be(&u, 0xd800 | (cp >> 10));
            ob_u16be(&u, 0xdc00 | (cp & 0x3ff));
        } else {
            ob_u16be(&u, cp);
        }
    }
    if (u.oom || u.n > UINT32_MAX - 64) {
        b->oom = 1;
        free(u.p);
        return;
    }
    ob_add(b, "MM\0\x2a", 4);
    ob_u32be(b, 8);
    ob_u16be(b, 1); /* IFD0: ExifIFD pointer */
    ob_u16be(b, 0x8769), ob_u16be(b, 4), ob_u32be(b, 1), ob_u32be(b, 26);
    ob_u32be(b, 0);
    ob_u16be(b, 1); /* ExifIFD at 26: UserComment, data at 44 */
    ob_u16be(b, 0x9286), ob_u16be(b, 7), ob_u32be(b, (uint32_t)u.n), ob_u32be(b, 44);
    ob_u32be(b, 0);
    ob_add(b, u.p, u.n);
    free(u.p);
}

typedef struct tiff {
    const uint8_t *p;
    size_t n;
    int be;
} tiff;

static int t16(const tiff *t, size_t off, unsigned *v) {
    if (off > t->n || t->n - off < 2) return 0;
    *v = t->be ? (unsigned)(t->p[off] << 8 | t->p[off + 1]) : (unsigned)(t->p[off + 1] << 8 | t->p[off]);
    return 1;
}
static int t32(const tiff *t, size_t off, uint32_t *v) {
    if (off > t->n || t->n - off < 4) return 0;
    const uint8_t *q = t->p + off;
    *v = t->be ? (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]
               : (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
    return 1;
}

/* Finds tag in the IFD at off; returns its entry offset or 0. */
static size_t ifd_find(const tiff *t, size_t off, unsigned tag) {
    unsigned cnt;
    if (!t16(t, off, &cnt)) return 0;
    for (unsigned i = 0; i < cnt; i++) {
        size_t ent = off + 2 + (size_t)i * 12;
        unsigned tg;
        if (!t16(t, ent, &tg) || ent + 12 > t->n) return 0;
        if (tg == tag) return ent;
    }
    return 0;
}

/* UserComment payload to UTF-8: ASCII/undefined as bytes, UNICODE as UTF-16 in the TIFF byte
 * order unless a BOM or the zero-byte pattern says otherwise (piexif always writes big-endian). */
static char *usercomment_utf8(const uint8_t *d, size_t n, int be, size_t *out_n) {
    if (n < 8) return NULL;
    const uint8_t *s = d + 8;
    size_t len = n - 8;
    if (!memcmp(d, "UNICODE\0", 8)) {
        size_t units = len / 2, zhi = 0, zlo = 0;
        for (size_t i = 0; i < units; i++) zhi += s[2 * i] == 0, zlo += s[2 * i + 1] == 0;
        if (units && s[0] == 0xfe && s[1] == 0xff) be = 1, s += 2, units--;
        else if (units && s[0] == 0xff && s[1] == 0xfe) be = 0, s += 2, units--;
        else if (zhi != zlo) be = zhi > zlo;
        if (units > SIZE_MAX / 4 - 1) return NULL;
        char *r = malloc(units * 3 + 1), *o = r;
        if (!r) return NULL;
        for (size_t i = 0; i < units; i++) {
            uint32_t u = be ? (uint32_t)(s[2 * i] << 8 | s[2 * i + 1]) : (uint32_t)(s[2 * i + 1] << 8 | s[2 * i]);
            if (u >= 0xd800 && u < 0xdc00 && i + 1 < units) {
                uint32_t l = be ? (uint32_t)(s[2 * i + 2] << 8 | s[2 * i + 3]) : (uint32_t)(s[2 * i + 3] << 8 | s[2 * i + 2]);
                if (l >= 0xdc00 && l < 0xe000) {
                    o += utf8_put(o, 0x10000 + ((u - 0xd800) << 10) + (l - 0xdc00));
                    i++;
                    continue;
                }
            }
            if (u >= 0xd800 && u < 0xe000) u = 0xfffd;
            o += utf8_put(o, u);
        }
        *out_n = (size_t)(o - r);
        while (*out_n && r[*out_n - 1] == 0) (*out_n)--;
        r[*out_n] = 0;
        return r;
    }
    while (len && s[len - 1] == 0) len--;
    char *r = malloc(len + 1);
    if (!r) return NULL;
    memcpy(r, s, len);
    r[len] = 0;
    *out_n = len;
    return r;
}

/* Reads orientation (1..8, else 1) and, into meta as "parameters", the UserComment. Malformed
 * EXIF is ignored: it is optional data and readers such as PIL skip it too. */
static int exif_parse(const uint8_t *p, size_t n, size_t max_text, sdxl_image_meta *meta, int *orientation) {
    if (n >= 6 && !memcmp(p, "Exif\0\0", 6)) p += 6, n -= 6;
    tiff t = {p, n, 0};
    if (n < 8) return 0;
    if (!memcmp(p, "MM\0\x2a", 4)) t.be = 1;
    else if (memcmp(p, "II\x2a\0", 4)) return 0;
    uint32_t ifd0;
    if (!t32(&t, 4, &ifd0)) return 0;
    size_t ent = ifd_find(&t, ifd0, 0x0112);
    unsigned o;
    if (ent && t16(&t, ent + 8, &o) && o >= 1 && o <= 8) *orientation = (int)o;
    if (!meta) return 0;
    uint32_t sub, cnt, off;
    ent = ifd_find(&t, ifd0, 0x8769);
    if (!ent || !t32(&t, ent + 8, &sub) || sub == ifd0) return 0;
    ent = ifd_find(&t, sub, 0x9286);
    if (!ent || !t32(&t, ent + 4, &cnt)) return 0;
    if (cnt <= 4) off = (uint32_t)(ent + 8);
    else if (!t32(&t, ent + 8, &off)) return 0;
    if (off > n || n - off < cnt || cnt > max_text) return 0;
    size_t un;
    char *u = usercomment_utf8(p + off, cnt, t.be, &un);
    if (!u) return 0;
    int r = meta_add(meta, "parameters", u, un);
    free(u);
    return r;
}

/* ---- XMP ---------------------------------------------------------------------------------- */

static void xml_attr(obuf *b, const char *name, const char *v) {
    ob_str(b, " ");
    ob_str(b, name);
    ob_str(b, "=\"");
    const unsigned char *s = (const unsigned char *)v;
    size_t n = strlen(v);
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t cp = utf8_next(s, n, &i);
        switch (cp) {
        case '&': ob_str(b, "&amp;"); break;
        case '<': ob_str(b, "&lt;"); break;
        case '>': ob_str(b, "&gt;"); break;
        case '"': ob_str(b, "&quot;"); break;
        case '\n': ob_str(b, "&#10;"); break;
        case '\r': ob_str(b, "&#13;"); break;
        case '\t': ob_str(b, "&#9;"); break;
        default:
            if (cp < 0x20 || cp == 0xfffd) ob_str(b, "\xef\xbf\xbd"); /* not representable in XML 1.0 */
            else ob_add(b, s + i0, i - i0);
        }
    }
    ob_str(b, "\"");
}

static void xmp_build(obuf *b, const char *parameters, const char *request) {
    ob_str(b, "<?xpacket begin=\"\xef\xbb\xbf\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n"
              "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">"
              "<rdf:Description rdf:about=\"\"");
    xml_attr(b, "xmlns:sdxl", XMP_NS);
    if (parameters) xml_attr(b, "sdxl:parameters", parameters);
    if (request) xml_attr(b, "sdxl:request", request);
    ob_str(b, "/></rdf:RDF></x:xmpmeta>\n<?xpacket end=\"w\"?>");
}

/* Value of attribute `name="..."` in the packet, entities decoded; NULL if absent or malformed. */
static char *xmp_attr(const char *x, size_t n, const char *name, size_t *out_n) {
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl + 2 <= n; i++) {
        if (memcmp(x + i, name, nl) || x[i + nl] != '=' || x[i + nl + 1] != '"') continue;
        if (i && x[i - 1] != ' ' && x[i - 1] != '\n' && x[i - 1] != '\t' && x[i - 1] != '\r') continue;
        size_t j = i + nl + 2, end = j;
        while (end < n && x[end] != '"') end++;
        if (end >= n) return NULL;
        char *r = malloc(2 * (end - j) + 4), *o = r; /* "&;" (2 bytes) decodes to U+FFFD (3) */
        if (!r) return NULL;
        while (j < end) {
            if (x[j] != '&') {
                *o++ = x[j++];
                continue;
            }
            size_t semi = j;
            while (semi < end && x[semi] != ';' && semi - j < 12) semi++;
            if (semi >= end || x[semi] != ';') {
                free(r);
                return NULL;
            }
            const char *ent = x + j + 1;
            size_t el = semi - j - 1;
            uint32_t cp = 0;
            if (el == 3 && !memcmp(ent, "amp", 3)) cp = '&';
            else if (el == 2 && !memcmp(ent, "lt", 2)) cp = '<';
            else if (el == 2 && !memcmp(ent, "gt", 2)) cp = '>';
            else if (el == 4 && !memcmp(ent, "quot", 4)) cp = '"';
            else if (el == 4 && !memcmp(ent, "apos", 4)) cp = '\'';
            else if (el >= 2 && ent[0] == '#') {
                char tmp[16];
                memcpy(tmp, ent + 1, el - 1);
                tmp[el - 1] = 0;
                char *endp;
                unsigned long v = tmp[0] == 'x' ? strtoul(tmp + 1, &endp, 16) : strtoul(tmp, &endp, 10);
                cp = (*endp || v == 0 || v > 0x10ffff || (v >= 0xd800 && v < 0xe000)) ? 0xfffd : (uint32_t)v;
            } else {
                cp = 0xfffd;
            }
            o += utf8_put(o, cp);
            j = semi + 1;
        }
        *o = 0;
        *out_n = (size_t)(o - r);
        return r;
    }
    return NULL;
}

static int xmp_parse(const char *x, size_t n, sdxl_image_meta *meta) {
    if (!meta) return 0;
    if (meta_add(meta, "XMP", x, n)) return -1;
    if (!strstr(meta->texts[meta->n_texts - 1].value, XMP_NS)) return 0;
    size_t vn;
    char *v;
    if (!meta_has(meta, "parameters") && (v = xmp_attr(x, n, "sdxl:parameters", &vn))) {
        int r = meta_add(meta, "parameters", v, vn);
        free(v);
        if (r) return r;
    }
    if (!meta_has(meta, "sdxl") && (v = xmp_attr(x, n, "sdxl:request", &vn))) {
        int r = meta_add(meta, "sdxl", v, vn);
        free(v);
        if (r) return r;
    }
    return 0;
}

/* ---- decoded pixels: alpha, orientation, channels ----------------------------------------- */

typedef struct raw {
    uint8_t *data;
    int w, h, ch; /* ch: 3, or 4 when alpha is kept for compositing */
    int orientation;
} raw;

static int check_dims(const char *what, const sdxl_image_limits *l, long long w, long long h, sdxl_err *e) {
    if (w <= 0 || h <= 0) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: bad image size %lldx%lld", what, w, h);
    if (w > l->max_width || h > l->max_height || (uint64_t)w * (uint64_t)h > l->max_pixels)
        return sdxl_seterr(e, SDXL_ERR_LIMIT,
                           "%s: image is %lldx%lld, limits are %dx%d and %llu pixels", what, w, h, l->max_width,
                           l->max_height, (unsigned long long)l->max_pixels);
    return SDXL_OK;
}

/* PIL's alpha_composite over opaque white, integer for integer: 7 extra bits, rounded /255. */
static uint8_t over_white(unsigned c, unsigned a) {
    if (a == 255) return (uint8_t)c;
    if (a == 0) return 255;
    uint32_t coef1 = a * 255u * 255u * 128u / (a * 255u + 255u * (255u - a));
    uint32_t coef2 = 255u * 128u - coef1;
    uint32_t t = c * coef1 + 255u * coef2 + (0x80u << 7);
    return (uint8_t)((((t >> 8) + t) >> 8) >> 7);
}

static int finish(raw *r, const char *what, const sdxl_image_limits *l, int channels, sdxl_image *out, sdxl_err *e) {
    size_t np = (size_t)r->w * (size_t)r->h;
    if (r->ch == 4) {
        uint8_t *p = r->data;
        for (size_t i = 0; i < np; i++) {
            unsigned a = p[4 * i + 3];
            uint8_t R = p[4 * i], G = p[4 * i + 1], B = p[4 * i + 2];
            if (l->alpha == SDXL_ALPHA_WHITE) R = over_white(R, a), G = over_white(G, a), B = over_white(B, a);
            p[3 * i] = R, p[3 * i + 1] = G, p[3 * i + 2] = B;
        }
        r->ch = 3;
    }
    int o = l->exif_orientation ? r->orientation : 1;
    if (o >= 2 && o <= 8) {
        int swap = o >= 5;
        int W = swap ? r->h : r->w, H = swap ? r->w : r->h;
        int st = check_dims(what, l, W, H, e);
        if (st) return st;
        uint8_t *d = malloc(np * 3);
        if (!d) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot allocate the rotated image", what);
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) {
                int sx, sy;
                switch (o) {
                case 2: sx = r->w - 1 - x, sy = y; break;
                case 3: sx = r->w - 1 - x, sy = r->h - 1 - y; break;
                case 4: sx = x, sy = r->h - 1 - y; break;
                case 5: sx = y, sy = x; break;
                case 6: sx = y, sy = r->h - 1 - x; break;
                case 7: sx = r->w - 1 - y, sy = r->h - 1 - x; break;
                default: sx = r->w - 1 - y, sy = x; break;
                }
                memcpy(d + ((size_t)y * W + x) * 3, r->data + ((size_t)sy * r->w + sx) * 3, 3);
            }
        }
        free(r->data);
        r->data = d;
        r->w = W;
        r->h = H;
    }
    if (channels == 1) {
        uint8_t *p = r->data;
        for (size_t i = 0; i < np; i++)
            p[i] = (uint8_t)((p[3 * i] * 19595u + p[3 * i + 1] * 38470u + p[3 * i + 2] * 7471u + 0x8000u) >> 16);
    }
    uint8_t *shrunk = realloc(r->data, np * (size_t)channels);
    out->data = shrunk ? shrunk : r->data;
    r->data = NULL;
    out->width = r->w;
    out->height = r->h;
    out->channels = channels;
    return SDXL_OK;
}

/* ---- PNG ---------------------------------------------------------------------------------- */

typedef struct pngdec {
    const uint8_t *buf;
    size_t n, pos;
    const char *what;
    const sdxl_image_limits *lim;
    int pixels; /* 0: texts and size only */
    png_structp png;
    png_infop info, end;
    raw r;
    uint8_t *row;       /* metadata-only reads go row by row */
    png_bytep *rows;
    sdxl_image_meta *meta;
    int st;
    char msg[256];
} pngdec;

static void png_err_fn(png_structp png, png_const_charp m) {
    pngdec *d = png_get_error_ptr(png);
    snprintf(d->msg, sizeof d->msg, "%s", m);
    png_longjmp(png, 1);
}
static void png_warn_fn(png_structp png, png_const_charp m) {
    (void)png;
    (void)m;
}
static void png_read_fn(png_structp png, png_bytep out, size_t len) {
    pngdec *d = png_get_io_ptr(png);
    if (len > d->n - d->pos) png_error(png, "unexpected end of file (truncated)");
    memcpy(out, d->buf + d->pos, len);
    d->pos += len;
}

static int png_collect_texts(pngdec *d, png_infop info) {
    png_textp t;
    int nt = 0;
    png_get_text(d->png, info, &t, &nt);
    for (int i = 0; i < nt; i++) {
        int itxt = t[i].compression == PNG_ITXT_COMPRESSION_NONE || t[i].compression == PNG_ITXT_COMPRESSION_zTXt;
        size_t len = itxt ? t[i].itxt_length : t[i].text_length;
        if (!t[i].text) len = 0;
        if (itxt) {
            if (meta_add(d->meta, t[i].key, t[i].text ? t[i].text : "", len)) return -1;
        } else {
            size_t un;
            char *u = latin1_to_utf8(t[i].text ? t[i].text : "", len, &un);
            if (!u || meta_add(d->meta, t[i].key, u, un)) {
                free(u);
                return -1;
            }
            free(u);
        }
    }
    return 0;
}

/* Runs libpng; returns 0, or 1 after a libpng error (message in d->msg), or sets d->st. */
static int png_run(pngdec *d) {
    if (setjmp(png_jmpbuf(d->png))) return 1;
    png_set_read_fn(d->png, d, png_read_fn);
    png_set_user_limits(d->png, 0x7fffffff, 0x7fffffff); /* ours are checked below, with our message */
    png_set_chunk_malloc_max(d->png, d->lim->max_text + 1024);
    png_read_info(d->png, d->info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(d->png, d->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if ((d->st = check_dims(d->what, d->lim, w, h, NULL))) {
        snprintf(d->msg, sizeof d->msg, "image is %ux%u, limits are %dx%d and %llu pixels", (unsigned)w, (unsigned)h,
                 d->lim->max_width, d->lim->max_height, (unsigned long long)d->lim->max_pixels);
        return 0;
    }
    int keep_alpha = d->lim->alpha == SDXL_ALPHA_WHITE;
    if (depth == 16) png_set_strip_16(d->png);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(d->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(d->png);
    if (keep_alpha && png_get_valid(d->png, d->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(d->png);
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(d->png);
    if (!keep_alpha) png_set_strip_alpha(d->png);
    int passes = png_set_interlace_handling(d->png);
    png_read_update_info(d->png, d->info);
    int ch = png_get_channels(d->png, d->info);
    if ((ch != 3 && ch != 4) || png_get_rowbytes(d->png, d->info) != (size_t)w * (size_t)ch)
        png_error(d->png, "unsupported pixel layout after conversion");
    d->r.w = (int)w;
    d->r.h = (int)h;
    d->r.ch = ch;
    if (d->pixels) {
        size_t nb = img_bytes((int)w, (int)h, ch);
        d->r.data = nb ? malloc(nb) : NULL;
        d->rows = malloc(sizeof *d->rows * h);
        if (!d->r.data || !d->rows) png_error(d->png, "out of memory for the pixels");
        for (png_uint_32 y = 0; y < h; y++) d->rows[y] = d->r.data + (size_t)y * w * (size_t)ch;
        png_read_image(d->png, d->rows);
    } else {
        d->row = malloc((size_t)w * (size_t)ch);
        if (!d->row) png_error(d->png, "out of memory for a row");
        for (int p = 0; p < passes; p++)
            for (png_uint_32 y = 0; y < h; y++) png_read_row(d->png, d->row, NULL);
    }
    png_read_end(d->png, d->end);
    png_bytep ex = NULL;
    png_uint_32 exn = 0;
    if (png_get_eXIf_1(d->png, d->info, &exn, &ex) && ex) exif_parse(ex, exn, 0, NULL, &d->r.orientation);
    if (d->meta && (png_collect_texts(d, d->info) || png_collect_texts(d, d->end)))
        png_error(d->png, "out of memory for texts");
    return 0;
}

/* Walks the chunk list before libpng sees it: libpng 1.6 allocates a chunk's declared length before
 * reading it, so a corrupt length would cost gigabytes; here every length must fit in the file, and
 * chunks other than image data must fit max_text. */
static int png_prescan(const uint8_t *b, size_t n, const char *what, const sdxl_image_limits *lim, sdxl_err *e) {
    size_t p = 8;
    while (n - p >= 12) {
        uint32_t len = (uint32_t)b[p] << 24 | (uint32_t)b[p + 1] << 16 | (uint32_t)b[p + 2] << 8 | b[p + 3];
        char type[5] = {0};
        for (int i = 0; i < 4; i++) {
            unsigned char c = b[p + 4 + i];
            type[i] = (char)(((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) ? c : '?');
        }
        if (len > n - p - 12)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: corrupt PNG: chunk %s at byte %zu declares %u bytes, past the end "
                               "of the file (truncated?)", what, type, p, len);
        if (memcmp(type, "IDAT", 4) && len > lim->max_text + 1024)
            return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: PNG chunk %s at byte %zu is %u bytes, limit %zu", what, type, p,
                               len, lim->max_text + 1024);
        p += 12 + (size_t)len;
        if (!memcmp(type, "IEND", 4)) return SDXL_OK;
    }
    return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: corrupt PNG: no IEND chunk (truncated file)", what);
}

static int png_decode(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int pixels,
                      raw *r, sdxl_image_meta *meta, sdxl_err *e) {
    int st = png_prescan(buf, n, what, lim, e);
    if (st) return st;
    pngdec d;
    memset(&d, 0, sizeof d);
    d.buf = buf;
    d.n = n;
    d.what = what;
    d.lim = lim;
    d.pixels = pixels;
    d.meta = meta;
    d.r.orientation = 1;
    d.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d, png_err_fn, png_warn_fn);
    if (d.png) d.info = png_create_info_struct(d.png);
    if (d.info) d.end = png_create_info_struct(d.png);
    if (!d.end) {
        png_destroy_read_struct(d.png ? &d.png : NULL, d.info ? &d.info : NULL, NULL);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot create a PNG decoder", what);
    }
    int jumped = png_run(&d);
    png_destroy_read_struct(&d.png, &d.info, &d.end);
    free(d.rows);
    free(d.row);
    if (jumped || d.st) {
        free(d.r.data);
        return sdxl_seterr(e, d.st ? d.st : SDXL_ERR_FORMAT, "%s: %s PNG: %s", what,
                           d.st ? "over the limits:" : "corrupt", d.msg);
    }
    *r = d.r;
    return SDXL_OK;
}

/* ---- JPEG --------------------------------------------------------------------------------- */

typedef struct jpgdec {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr prog;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    struct jpeg_decompress_struct ci;
    const uint8_t *buf;
    size_t n;
    const char *what;
    const sdxl_image_limits *lim;
    int pixels;
    raw r;
    sdxl_image_meta *meta;
    int st;
} jpgdec;

static void jpg_error_exit(j_common_ptr ci) {
    jpgdec *d = (jpgdec *)ci->err;
    ci->err->format_message(ci, d->msg);
    longjmp(d->jb, 1);
}
/* libjpeg only warns on a truncated file and fills the rest with grey; we refuse it, as PIL does. */
static void jpg_emit(j_common_ptr ci, int level) {
    if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF) jpg_error_exit(ci);
    if (level < 0) ci->err->num_warnings++;
}
static void jpg_output(j_common_ptr ci) { (void)ci; }
static void jpg_progress(j_common_ptr ci) {
    jpgdec *d = (jpgdec *)ci->err;
    if (d->ci.input_scan_number > JPEG_MAX_SCANS) {
        snprintf(d->msg, sizeof d->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(d->jb, 1);
    }
}

static unsigned muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static int jpg_run(jpgdec *d) {
    if (setjmp(d->jb)) return 1;
    jpeg_create_decompress(&d->ci);
    d->ci.progress = &d->prog;
    jpeg_mem_src(&d->ci, d->buf, (unsigned long)d->n);
    jpeg_save_markers(&d->ci, JPEG_APP0 + 1, 0xffff);
    if (d->meta) jpeg_save_markers(&d->ci, JPEG_COM, 0xffff);
    jpeg_read_header(&d->ci, TRUE);
    if ((d->st = check_dims(d->what, d->lim, d->ci.image_width, d->ci.image_height, NULL))) {
        snprintf(d->msg, sizeof d->msg, "image is %ux%u, limits are %dx%d and %llu pixels",
                 (unsigned)d->ci.image_width, (unsigned)d->ci.image_height, d->lim->max_width, d->lim->max_height,
                 (unsigned long long)d->lim->max_pixels);
        return 0;
    }
    d->r.orientation = 1;
    for (jpeg_saved_marker_ptr m = d->ci.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && !memcmp(m->data, "Exif\0\0", 6)) {
            if (exif_parse(m->data, m->data_length, d->lim->max_text, d->meta, &d->r.orientation))
                ERREXIT(&d->ci, JERR_OUT_OF_MEMORY);
        } else if (m->marker == JPEG_APP0 + 1 && m->data_length >= sizeof XMP_JPEG_ID &&
                   !memcmp(m->data, XMP_JPEG_ID, sizeof XMP_JPEG_ID)) {
            if (xmp_parse((const char *)m->data + sizeof XMP_JPEG_ID, m->data_length - sizeof XMP_JPEG_ID, d->meta))
                ERREXIT(&d->ci, JERR_OUT_OF_MEMORY);
        } else if (m->marker == JPEG_COM && d->meta) {
            if (meta_add(d->meta, "comment", (const char *)m->data, m->data_length)) ERREXIT(&d->ci, JERR_OUT_OF_MEMORY);
        }
    }
    d->r.w = (int)d->ci.image_width;
    d->r.h = (int)d->ci.image_height;
    if (!d->pixels) return 0;
    int cmyk = d->ci.jpeg_color_space == JCS_CMYK || d->ci.jpeg_color_space == JCS_YCCK;
    d->ci.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&d->ci);
    int ch = d->ci.output_components;
    if (ch != (cmyk ? 4 : 3) || d->ci.output_width != d->ci.image_width || d->ci.output_height != d->ci.image_height)
        ERREXIT(&d->ci, JERR_CONVERSION_NOTIMPL);
    size_t nb = img_bytes(d->r.w, d->r.h, ch);
    d->r.data = nb ? malloc(nb) : NULL;
    if (!d->r.data) ERREXIT(&d->ci, JERR_OUT_OF_MEMORY);
    size_t stride = (size_t)d->r.w * (size_t)ch;
    while (d->ci.output_scanline < d->ci.output_height) {
        JSAMPROW row = d->r.data + (size_t)d->ci.output_scanline * stride;
        jpeg_read_scanlines(&d->ci, &row, 1);
    }
    jpeg_finish_decompress(&d->ci);
    if (cmyk) {
        /* Adobe writes inverted CMYK; PIL's conversion: R = (255-K) - (C * (255-K)) / 255 */
        int inv = d->ci.saw_Adobe_marker;
        size_t np = (size_t)d->r.w * (size_t)d->r.h;
        uint8_t *p = d->r.data;
        for (size_t i = 0; i < np; i++) {
            unsigned c = p[4 * i], m = p[4 * i + 1], y = p[4 * i + 2], k = p[4 * i + 3];
            if (inv) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
            unsigned nk = 255 - k;
            p[3 * i] = (uint8_t)(nk - muldiv255(c, nk));
            p[3 * i + 1] = (uint8_t)(nk - muldiv255(m, nk));
            p[3 * i + 2] = (uint8_t)(nk - muldiv255(y, nk));
        }
    }
    d->r.ch = 3;
    return 0;
}

static int jpg_decode(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int pixels,
                      raw *r, sdxl_image_meta *meta, sdxl_err *e) {
    jpgdec *d = calloc(1, sizeof *d);
    if (!d) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot create a JPEG decoder", what);
    d->buf = buf;
    d->n = n;
    d->what = what;
    d->lim = lim;
    d->pixels = pixels;
    d->meta = meta;
    d->ci.err = jpeg_std_error(&d->pub);
    d->pub.error_exit = jpg_error_exit;
    d->pub.emit_message = jpg_emit;
    d->pub.output_message = jpg_output;
    d->prog.progress_monitor = jpg_progress;
    int jumped = jpg_run(d);
    jpeg_destroy_decompress(&d->ci);
    int st = SDXL_OK;
    if (jumped || d->st) {
        free(d->r.data);
        st = sdxl_seterr(e, d->st ? d->st : SDXL_ERR_FORMAT, "%s: %s JPEG: %s", what,
                         d->st ? "over the limits:" : "corrupt", d->msg);
    } else {
        *r = d->r;
    }
    free(d);
    return st;
}

/* ---- WebP --------------------------------------------------------------------------------- */

static const char *vp8_status(VP8StatusCode s) {
    switch (s) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "unexpected end of file (truncated)";
    default: return "error";
    }
}

static int webp_decode(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int pixels,
                       raw *r, sdxl_image_meta *meta, sdxl_err *e) {
    WebPBitstreamFeatures f;
    VP8StatusCode s = WebPGetFeatures(buf, n, &f);
    if (s != VP8_STATUS_OK) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: corrupt WebP: %s", what, vp8_status(s));
    if (f.has_animation) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: animated WebP is not supported", what);
    int st = check_dims(what, lim, f.width, f.height, e);
    if (st) return st;
    memset(r, 0, sizeof *r);
    r->orientation = 1;
    r->w = f.width;
    r->h = f.height;
    WebPData wd = {buf, n};
    WebPMux *mux = WebPMuxCreate(&wd, 0);
    if (mux) {
        WebPData c;
        if (WebPMuxGetChunk(mux, "EXIF", &c) == WEBP_MUX_OK && c.size <= lim->max_text)
            st = exif_parse(c.bytes, c.size, lim->max_text, meta, &r->orientation);
        if (!st && meta && WebPMuxGetChunk(mux, "XMP ", &c) == WEBP_MUX_OK && c.size <= lim->max_text)
            st = xmp_parse((const char *)c.bytes, c.size, meta);
        WebPMuxDelete(mux);
        if (st) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory for metadata", what);
    } else if (!pixels) {
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: corrupt WebP container", what);
    }
    if (!pixels) return SDXL_OK;
    int ch = (lim->alpha == SDXL_ALPHA_WHITE && f.has_alpha) ? 4 : 3;
    size_t nb = img_bytes(f.width, f.height, ch);
    r->data = nb ? malloc(nb) : NULL;
    if (!r->data) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot allocate %dx%d", what, f.width, f.height);
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg)) {
        free(r->data);
        r->data = NULL;
        return sdxl_seterr(e, SDXL_ERR_INTERNAL, "%s: libwebp version mismatch", what);
    }
    cfg.output.colorspace = ch == 4 ? MODE_RGBA : MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = r->data;
    cfg.output.u.RGBA.stride = f.width * ch;
    cfg.output.u.RGBA.size = nb;
    s = WebPDecode(buf, n, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (s != VP8_STATUS_OK) {
        free(r->data);
        r->data = NULL;
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: corrupt WebP: %s", what, vp8_status(s));
    }
    r->ch = ch;
    return SDXL_OK;
}

/* ---- decode entry points ------------------------------------------------------------------ */

static int decode_any(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int pixels,
                      raw *r, sdxl_image_meta *meta, sdxl_err *e) {
    memset(r, 0, sizeof *r);
    if (n > lim->max_bytes)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: %zu bytes, limit %zu", what, n, lim->max_bytes);
    int st;
    switch (sdxl_image_sniff(buf, n)) {
    case SDXL_IMAGE_PNG: st = png_decode(buf, n, what, lim, pixels, r, meta, e); break;
    case SDXL_IMAGE_JPEG: st = jpg_decode(buf, n, what, lim, pixels, r, meta, e); break;
    case SDXL_IMAGE_WEBP: st = webp_decode(buf, n, what, lim, pixels, r, meta, e); break;
    default: return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: not a PNG, JPEG or WebP file (unknown signature)", what);
    }
    if (st) sdxl_image_meta_free(meta);
    meta_link(meta);
    return st;
}

int sdxl_image_decode(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int channels,
                      sdxl_image *out, sdxl_image_meta *meta, sdxl_err *e) {
    sdxl_image_limits dl;
    if (!lim) sdxl_image_limits_init(&dl), lim = &dl;
    if (!what) what = "image";
    memset(out, 0, sizeof *out);
    if (meta) memset(meta, 0, sizeof *meta);
    if (channels != 1 && channels != 3)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: channels must be 1 or 3, got %d", what, channels);
    if (!buf && n) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: no data", what);
    raw r;
    int st = decode_any(buf ? buf : (const uint8_t *)"", n, what, lim, 1, &r, meta, e);
    if (!st) st = finish(&r, what, lim, channels, out, e);
    free(r.data);
    if (st && meta) sdxl_image_meta_free(meta);
    return st;
}

/* Reads a whole file, refusing anything over max_bytes before reading it. */
static int read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *out_n, sdxl_err *e) {
    *out = NULL;
    *out_n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || S_ISDIR(sb.st_mode)) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: not a readable file", path);
    }
    if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size > (uint64_t)max_bytes) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: %lld bytes, limit %zu", path, (long long)sb.st_size, max_bytes);
    }
    size_t cap = S_ISREG(sb.st_mode) ? (size_t)sb.st_size + 1 : 65536, n = 0;
    uint8_t *b = malloc(cap);
    if (!b) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, cap);
    }
    for (;;) {
        if (n == cap) {
            if (cap > max_bytes) break;
            size_t nc = cap * 2;
            uint8_t *nb = realloc(b, nc);
            if (!nb) {
                free(b);
                close(fd);
                return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, nc);
            }
            b = nb;
            cap = nc;
        }
        ssize_t k = read(fd, b + n, cap - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int err = errno;
            free(b);
            close(fd);
            return sdxl_seterr(e, SDXL_ERR_IO, "%s: read failed: %s", path, strerror(err));
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    if (n > max_bytes) {
        free(b);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: more than %zu bytes", path, max_bytes);
    }
    *out = b;
    *out_n = n;
    return SDXL_OK;
}

int sdxl_image_read(const char *path, const sdxl_image_limits *lim, int channels, sdxl_image *out,
                    sdxl_image_meta *meta, sdxl_err *e) {
    sdxl_image_limits dl;
    if (!lim) sdxl_image_limits_init(&dl), lim = &dl;
    memset(out, 0, sizeof *out);
    if (meta) memset(meta, 0, sizeof *meta);
    uint8_t *b;
    size_t n;
    int st = read_file(path, lim->max_bytes, &b, &n, e);
    if (st) return st;
    st = sdxl_image_decode(b, n, path, lim, channels, out, meta, e);
    free(b);
    return st;
}

int sdxl_image_read_meta(const char *path, const sdxl_image_limits *lim, sdxl_image_meta *meta, int *width,
                         int *height, sdxl_err *e) {
    sdxl_image_limits dl;
    if (!lim) sdxl_image_limits_init(&dl), lim = &dl;
    memset(meta, 0, sizeof *meta);
    uint8_t *b;
    size_t n;
    int st = read_file(path, lim->max_bytes, &b, &n, e);
    if (st) return st;
    raw r;
    st = decode_any(b, n, path, lim, 0, &r, meta, e);
    free(b);
    free(r.data);
    if (!st) {
        int swap = lim->exif_orientation && r.orientation >= 5;
        if (width) *width = swap ? r.h : r.w;
        if (height) *height = swap ? r.w : r.h;
    }
    return st;
}

/* ---- encoders ----------------------------------------------------------------------------- */

typedef struct pngenc {
    png_structp png;
    png_infop info;
    const sdxl_image *img;
    int level;
    png_text texts[2];
    int n_texts;
    obuf out;
    char msg[256];
} pngenc;

static void png_write_fn(png_structp png, png_bytep data, size_t len) {
    pngenc *c = png_get_io_ptr(png);
    ob_add(&c->out, data, len);
    if (c->out.oom) png_error(png, "out of memory for the output");
}
static void png_flush_fn(png_structp png) { (void)png; }
static void png_eerr_fn(png_structp png, png_const_charp m) {
    pngenc *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", m);
    png_longjmp(png, 1);
}

static int png_wrun(pngenc *c) {
    if (setjmp(png_jmpbuf(c->png))) return 1;
    const sdxl_image *im = c->img;
    png_set_write_fn(c->png, c, png_write_fn, png_flush_fn);
    png_set_IHDR(c->png, c->info, (png_uint_32)im->width, (png_uint_32)im->height, 8,
                 im->channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(c->png, c->level);
    if (c->n_texts) png_set_text(c->png, c->info, c->texts, c->n_texts);
    png_write_info(c->png, c->info);
    for (int y = 0; y < im->height; y++)
        png_write_row(c->png, im->data + (size_t)y * (size_t)im->width * (size_t)im->channels);
    png_write_end(c->png, NULL);
    return 0;
}

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

static void png_text_set(pngenc *c, const char *key, const char *val) {
    png_text *t = &c->texts[c->n_texts++];
    memset(t, 0, sizeof *t);
    t->key = (png_charp)key;
    t->text = (png_charp)val;
    if (is_ascii(val)) {
        t->compression = PNG_TEXT_COMPRESSION_NONE;
        t->text_length = strlen(val);
    } else {
        t->compression = PNG_ITXT_COMPRESSION_NONE;
        t->itxt_length = strlen(val);
        t->lang = (png_charp) "";
        t->lang_key = (png_charp) "";
    }
}

static int png_encode(const sdxl_image *img, int level, const char *params, const char *req, obuf *out, sdxl_err *e) {
    pngenc c;
    memset(&c, 0, sizeof c);
    c.img = img;
    c.level = level;
    if (params) png_text_set(&c, "parameters", params);
    if (req) png_text_set(&c, "sdxl", req);
    c.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &c, png_eerr_fn, png_warn_fn);
    if (c.png) c.info = png_create_info_struct(c.png);
    if (!c.info) {
        png_destroy_write_struct(c.png ? &c.png : NULL, NULL);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "PNG encoder: cannot create");
    }
    int jumped = png_wrun(&c);
    png_destroy_write_struct(&c.png, &c.info);
    if (jumped) {
        free(c.out.p);
        return sdxl_seterr(e, c.out.oom ? SDXL_ERR_NOMEM : SDXL_ERR_INTERNAL, "PNG encoder: %s", c.msg);
    }
    *out = c.out;
    return SDXL_OK;
}

typedef struct jpgenc {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    struct jpeg_compress_struct ci;
    const sdxl_image *img;
    int quality;
    const obuf *exif, *xmp;
    unsigned char *mem;
    unsigned long mem_n;
} jpgenc;

static void jpge_error_exit(j_common_ptr ci) {
    jpgenc *c = (jpgenc *)ci->err;
    ci->err->format_message(ci, c->msg);
    longjmp(c->jb, 1);
}

static int jpg_wrun(jpgenc *c) {
    if (setjmp(c->jb)) return 1;
    jpeg_create_compress(&c->ci);
    jpeg_mem_dest(&c->ci, &c->mem, &c->mem_n);
    c->ci.image_width = (JDIMENSION)c->img->width;
    c->ci.image_height = (JDIMENSION)c->img->height;
    c->ci.input_components = c->img->channels;
    c->ci.in_color_space = c->img->channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&c->ci);
    jpeg_set_quality(&c->ci, c->quality, TRUE);
    jpeg_start_compress(&c->ci, TRUE);
    if (c->exif && c->exif->n) jpeg_write_marker(&c->ci, JPEG_APP0 + 1, c->exif->p, (unsigned)c->exif->n);
    if (c->xmp && c->xmp->n) jpeg_write_marker(&c->ci, JPEG_APP0 + 1, c->xmp->p, (unsigned)c->xmp->n);
    size_t stride = (size_t)c->img->width * (size_t)c->img->channels;
    while (c->ci.next_scanline < c->ci.image_height) {
        JSAMPROW row = c->img->data + (size_t)c->ci.next_scanline * stride;
        jpeg_write_scanlines(&c->ci, &row, 1);
    }
    jpeg_finish_compress(&c->ci);
    return 0;
}

static int jpg_encode(const sdxl_image *img, int quality, const char *params, const char *req, obuf *out,
                      sdxl_err *e) {
    obuf exif = {0}, xmp = {0};
    int st = SDXL_OK;
    if (params) {
        ob_add(&exif, "Exif\0\0", 6);
        exif_build(&exif, params);
    }
    if (params || req) {
        ob_add(&xmp, XMP_JPEG_ID, sizeof XMP_JPEG_ID);
        xmp_build(&xmp, params, req);
    }
    if (exif.oom || xmp.oom) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "JPEG encoder: out of memory for metadata");
    else if (exif.n > APP_MAX || xmp.n > APP_MAX)
        st = sdxl_seterr(e, SDXL_ERR_LIMIT,
                         "JPEG encoder: metadata needs %zu bytes in one APP1 segment, JPEG allows %d; write PNG",
                         exif.n > xmp.n ? exif.n : xmp.n, APP_MAX);
    jpgenc *c = st ? NULL : calloc(1, sizeof *c);
    if (!st && !c) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "JPEG encoder: cannot create");
    if (c) {
        c->ci.err = jpeg_std_error(&c->pub);
        c->pub.error_exit = jpge_error_exit;
        c->img = img;
        c->quality = quality;
        c->exif = &exif;
        c->xmp = &xmp;
        int jumped = jpg_wrun(c);
        jpeg_destroy_compress(&c->ci);
        if (jumped) {
            st = sdxl_seterr(e, SDXL_ERR_INTERNAL, "JPEG encoder: %s", c->msg);
        } else {
            memset(out, 0, sizeof *out);
            ob_add(out, c->mem, c->mem_n);
            if (out->oom) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "JPEG encoder: out of memory");
        }
        free(c->mem);
        free(c);
    }
    free(exif.p);
    free(xmp.p);
    return st;
}

static int webp_encode(const sdxl_image *img, int quality, int lossless, const char *params, const char *req,
                       obuf *out, sdxl_err *e) {
    if (img->width > WEBP_MAX_DIM || img->height > WEBP_MAX_DIM)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "WebP encoder: %dx%d is over the format's %d limit", img->width,
                           img->height, WEBP_MAX_DIM);
    const uint8_t *rgb = img->data;
    uint8_t *tmp = NULL;
    if (img->channels == 1) {
        size_t np = (size_t)img->width * (size_t)img->height;
        tmp = malloc(np * 3);
        if (!tmp) return sdxl_seterr(e, SDXL_ERR_NOMEM, "WebP encoder: out of memory");
        for (size_t i = 0; i < np; i++) tmp[3 * i] = tmp[3 * i + 1] = tmp[3 * i + 2] = img->data[i];
        rgb = tmp;
    }
    uint8_t *enc = NULL;
    size_t n = lossless ? WebPEncodeLosslessRGB(rgb, img->width, img->height, img->width * 3, &enc)
                        : WebPEncodeRGB(rgb, img->width, img->height, img->width * 3, (float)quality, &enc);
    free(tmp);
    if (!n) {
        WebPFree(enc);
        return sdxl_seterr(e, SDXL_ERR_INTERNAL, "WebP encoder failed on %dx%d", img->width, img->height);
    }
    int st = SDXL_OK;
    memset(out, 0, sizeof *out);
    if (!params && !req) {
        ob_add(out, enc, n);
        WebPFree(enc);
        return out->oom ? sdxl_seterr(e, SDXL_ERR_NOMEM, "WebP encoder: out of memory") : SDXL_OK;
    }
    obuf exif = {0}, xmp = {0};
    if (params) exif_build(&exif, params);
    xmp_build(&xmp, params, req);
    WebPData bs = {enc, n}, asm_out = {NULL, 0};
    WebPMux *mux = (exif.oom || xmp.oom) ? NULL : WebPMuxCreate(&bs, 0);
    if (!mux) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "WebP encoder: cannot add metadata");
    } else {
        WebPData ex = {exif.p, exif.n}, xm = {xmp.p, xmp.n};
        if ((exif.n && WebPMuxSetChunk(mux, "EXIF", &ex, 0) != WEBP_MUX_OK) ||
            WebPMuxSetChunk(mux, "XMP ", &xm, 0) != WEBP_MUX_OK || WebPMuxAssemble(mux, &asm_out) != WEBP_MUX_OK)
            st = sdxl_seterr(e, SDXL_ERR_INTERNAL, "WebP encoder: cannot add metadata chunks");
        else
            ob_add(out, asm_out.bytes, asm_out.size);
        WebPMuxDelete(mux);
    }
    WebPDataClear(&asm_out);
    WebPFree(enc);
    free(exif.p);
    free(xmp.p);
    if (!st && out->oom) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "WebP encoder: out of memory");
    if (st) free(out->p), memset(out, 0, sizeof *out);
    return st;
}

int sdxl_image_encode(const sdxl_image *img, sdxl_image_format fmt, const sdxl_image_write_opts *o,
                      const char *parameters, const char *request, uint8_t **out, size_t *out_len, sdxl_err *e) {
    *out = NULL;
    *out_len = 0;
    sdxl_image_write_opts d;
    if (!o) sdxl_image_write_opts_init(&d), o = &d;
    if (!img || !img->data || (img->channels != 1 && img->channels != 3) || !img_bytes(img->width, img->height, 3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "image encoder: no pixels or bad channel count");
    if (img->width > 0x7fffffff / 4 || img->height > 65500)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "image encoder: %dx%d is too large", img->width, img->height);
    if (o->quality < 1 || o->quality > 100)
        return sdxl_seterr(e, SDXL_ERR_ARG, "image encoder: quality must be 1..100, got %d", o->quality);
    if (o->png_compression < 0 || o->png_compression > 9)
        return sdxl_seterr(e, SDXL_ERR_ARG, "image encoder: png_compression must be 0..9, got %d", o->png_compression);
    obuf b = {0};
    int st;
    switch (fmt) {
    case SDXL_IMAGE_PNG: st = png_encode(img, o->png_compression, parameters, request, &b, e); break;
    case SDXL_IMAGE_JPEG: st = jpg_encode(img, o->quality, parameters, request, &b, e); break;
    case SDXL_IMAGE_WEBP: st = webp_encode(img, o->quality, o->lossless, parameters, request, &b, e); break;
    default: return sdxl_seterr(e, SDXL_ERR_ARG, "image encoder: unknown output format");
    }
    if (st) return st;
    *out = b.p;
    *out_len = b.n;
    return SDXL_OK;
}

int sdxl_image_write(const char *path, sdxl_image_format fmt, const sdxl_image *img, const sdxl_image_write_opts *o,
                     const char *parameters, const char *request, sdxl_err *e) {
    if (fmt == SDXL_IMAGE_UNKNOWN) fmt = sdxl_image_format_from_path(path);
    if (fmt == SDXL_IMAGE_UNKNOWN)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: unknown image extension (use .png, .jpg, .jpeg or .webp)", path);
    uint8_t *buf;
    size_t n;
    int st = sdxl_image_encode(img, fmt, o, parameters, request, &buf, &n, e);
    if (st) return sdxl_err_prefix(e, "%s", path);
    /* a unique sibling name, then rename: readers never see a partial file */
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 64);
    int fd = -1;
    if (tmp) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        for (int tries = 0; tries < 100 && fd < 0; tries++) {
            snprintf(tmp, pl + 64, "%s.%ld.%lx.tmp", path, (long)getpid(),
                     (unsigned long)(ts.tv_nsec + tries * 7919L) ^ (unsigned long)(uintptr_t)&ts);
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
            if (fd < 0 && errno != EEXIST) break;
        }
    }
    if (fd < 0) {
        st = sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot create: %s", path, tmp ? strerror(errno) : "out of memory");
        free(tmp);
        free(buf);
        return st;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t k = write(fd, buf + done, n - done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        done += (size_t)k;
    }
    int werr = done < n ? errno : 0;
    if (close(fd) != 0 && !werr) werr = errno;
    if (!werr && rename(tmp, path) != 0) werr = errno;
    if (werr) {
        unlink(tmp);
        st = sdxl_seterr(e, SDXL_ERR_IO, "%s: write failed: %s", path, strerror(werr ? werr : EIO));
    }
    free(tmp);
    free(buf);
    return st;
}
