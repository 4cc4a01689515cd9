/* The web page's routes: the embedded files (/, /app.js, /app.css, /favicon.svg) with an ETag,
 * revalidation and a strict Content-Security-Policy; and two small /v1 helpers the page calls as
 * fields change: POST /v1/tokenize (A1111 token counts per 75-token chunk) and POST /v1/preprocess
 * (a ControlNet image fitted and preprocessed as a job would see it, as a PNG preview). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/preprocess.h"
#include "io/image.h"
#include "io/resize.h"
#include "serve/b64.h"
#include "serve/internal.h"
#include "serve/web/web.h"
#include "text/prompt.h"

/* Everything the page loads comes from this server; images shown are blobs (fetched with the
 * credentials) or data: URLs (previews); nothing may frame the page. */
static const char CSP[] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

void h_web_asset(srv_req *r) {
    const srv_web_asset *a = NULL;
    for (size_t i = 0; i < sdxl_web_n_assets; i++)
        if (!strcmp(sdxl_web_assets[i].path, r->url)) a = &sdxl_web_assets[i];
    if (!a) {
        srv_error(r, 404, "not_found", NULL, "Not Found");
        return;
    }
    srv_header(r, "ETag", a->etag);
    /* revalidated on every load: an upgraded binary is picked up at once, an unchanged page costs a 304 */
    srv_header(r, "Cache-Control", "no-cache");
    srv_header(r, "X-Content-Type-Options", "nosniff");
    if (!strcmp(a->path, "/")) {
        srv_header(r, "Content-Security-Policy", CSP);
        srv_header(r, "Referrer-Policy", "no-referrer");
    }
    const char *inm = srv_header_in(r, "If-None-Match");
    if (inm && (strstr(inm, a->etag) || !strcmp(inm, "*"))) {
        srv_bytes(r, 304, NULL, "", 0);
        return;
    }
    srv_bytes(r, 200, a->ctype, a->data, a->len);
}

/* Fails with 422 naming the first key of obj not in the '|'-separated list. */
static int only_keys(srv_req *r, const sdxl_json *obj, const char *allowed) {
    for (size_t i = 0; i < obj->len; i++) {
        const char *k = obj->keys[i];
        size_t kl = obj->key_lens[i];
        const char *p = allowed;
        int found = 0;
        while (*p && !found) {
            const char *bar = strchr(p, '|');
            size_t n = bar ? (size_t)(bar - p) : strlen(p);
            found = n == kl && !memcmp(p, k, n);
            p += n + (bar ? 1 : 0);
        }
        if (!found) {
            srv_error(r, 422, "unknown_field", k, "%s: not a field of this request (expected %s)", k, allowed);
            return -1;
        }
    }
    return 0;
}

/* Optional string field: NULL when absent or null; -1 (answered) on a wrong type. */
static int opt_str(srv_req *r, const char *key, const sdxl_json **out) {
    const sdxl_json *v = sdxl_json_get(r->json, key);
    *out = NULL;
    if (!v || v->type == SDXL_JSON_NULL) return 0;
    if (v->type != SDXL_JSON_STRING) {
        srv_error(r, 422, "wrong_type", key, "%s: expected a string", key);
        return -1;
    }
    *out = v;
    return 0;
}

/* Optional integer field within lo..hi; def when absent. */
static int opt_int(srv_req *r, const char *key, int lo, int hi, int def, int *out) {
    const sdxl_json *v = sdxl_json_get(r->json, key);
    *out = def;
    if (!v || v->type == SDXL_JSON_NULL) return 0;
    if (v->type != SDXL_JSON_NUMBER || !v->is_int) {
        srv_error(r, 422, "wrong_type", key, "%s: expected an integer", key);
        return -1;
    }
    if (v->integer < lo || v->integer > hi) {
        srv_error(r, 422, "out_of_range", key, "%s: must be within %d..%d, got %lld", key, lo, hi,
                  (long long)v->integer);
        return -1;
    }
    *out = (int)v->integer;
    return 0;
}

/* {"n_tokens","chunks":[tokens in each 75-token window],"loras":[...]} of one prompt, as the first
 * text encoder's A1111 chunking sees it (BREAK, comma back-off, <lora:> tags taken out). */
static int tokenize_one(sdxl_tokenizer *tok, const sdxl_json *text, sdxl_strbuf *b, sdxl_err *e) {
    sdxl_prompt_opts o;
    sdxl_prompt_opts_init(&o);
    o.pad_id = SDXL_TOK_PAD_TE1;
    sdxl_prompt p;
    memset(&p, 0, sizeof p);
    int st = sdxl_prompt_build(tok, text->str, text->len, &o, &p, e);
    if (st) return st;
    sdxl_sb_printf(b, "{\"n_tokens\":%zu,\"chunks\":[", p.n_tokens);
    for (int c = 0; c < p.n_chunks; c++) {
        const int32_t *ids = p.ids + (size_t)c * SDXL_TOK_CTX;
        int n = 0;
        for (int i = 1; i <= SDXL_TOK_CHUNK; i++) n += ids[i] != SDXL_TOK_EOS;
        sdxl_sb_printf(b, "%s%d", c ? "," : "", n);
    }
    sdxl_sb_str(b, "],\"loras\":[");
    for (int l = 0; l < p.n_loras; l++) {
        sdxl_sb_str(b, l ? ",{\"name\":" : "{\"name\":");
        sdxl_sb_json(b, p.loras[l].name);
        sdxl_sb_printf(b, ",\"te_weight\":%.6g,\"unet_weight\":%.6g}", p.loras[l].te_weight, p.loras[l].unet_weight);
    }
    sdxl_sb_str(b, "]}");
    sdxl_prompt_free(&p);
    return SDXL_OK;
}

void h_tokenize(srv_req *r) {
    static const char *const keys[2] = {"prompt", "negative_prompt"};
    const sdxl_json *text[2];
    if (only_keys(r, r->json, "prompt|negative_prompt")) return;
    for (int k = 0; k < 2; k++) {
        if (opt_str(r, keys[k], &text[k])) return;
        if (text[k] && text[k]->len > r->srv->o.lim.max_prompt) {
            srv_error(r, 422, "limit", keys[k], "%s: %zu bytes, the server's limit is %zu", keys[k], text[k]->len,
                      r->srv->o.lim.max_prompt);
            return;
        }
    }
    sdxl_err e = {0};
    sdxl_tokenizer *tok = NULL;
    if (sdxl_tokenizer_new(&tok, &e) != SDXL_OK) {
        srv_error(r, 503, "nomem", NULL, "cannot build the tokenizer: %s", e.msg);
        return;
    }
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{");
    int first = 1;
    for (int k = 0; k < 2; k++) {
        if (!text[k]) continue;
        sdxl_sb_printf(&b, "%s\"%s\":", first ? "" : ",", keys[k]);
        first = 0;
        int st = tokenize_one(tok, text[k], &b, &e);
        if (st) {
            sdxl_sb_free(&b);
            sdxl_tokenizer_free(tok);
            /* the parser names the text "prompt"; say which of the two it was */
            const char *m = strncmp(e.msg, "prompt: ", 8) ? e.msg : e.msg + 8;
            srv_error(r, srv_status_http(st), st == SDXL_ERR_NOMEM ? "nomem" : "invalid_prompt", keys[k], "%s: %s",
                      keys[k], m);
            return;
        }
    }
    sdxl_sb_str(&b, "}");
    sdxl_tokenizer_free(tok);
    srv_take_json(r, 200, &b);
}

void h_preprocess(srv_req *r) {
    if (only_keys(r, r->json, "image|preprocess|width|height|resize|max_side")) return;
    const sdxl_json *im, *spec_j, *resize_j;
    if (opt_str(r, "image", &im) || opt_str(r, "preprocess", &spec_j) || opt_str(r, "resize", &resize_j)) return;
    if (!im) {
        srv_error(r, 422, "missing_field", "image", "image: a base64 PNG/JPEG/WebP (or data: URL) is required");
        return;
    }
    int W, H, max_side, mode = SDXL_RESIZE_JUST;
    if (opt_int(r, "width", 0, 8192, 0, &W) || opt_int(r, "height", 0, 8192, 0, &H) ||
        opt_int(r, "max_side", 16, 2048, 512, &max_side))
        return;
    if (resize_j) {
        static const char *const modes[3] = {"just", "crop", "fill"};
        mode = -1;
        for (int i = 0; i < 3; i++)
            if (!strcmp(resize_j->str, modes[i])) mode = i;
        if (mode < 0) {
            srv_error(r, 422, "bad_value", "resize", "resize: expected just, crop or fill, got '%.64s'", resize_j->str);
            return;
        }
    }
    sdxl_err e = {0};
    sdxl_preprocess pp;
    if (sdxl_preprocess_parse(spec_j ? spec_j->str : NULL, &pp, &e) != SDXL_OK) {
        srv_error(r, 422, "bad_value", "preprocess", "preprocess: %s", e.msg);
        return;
    }
    const sdxl_serve_limits *l = &r->srv->o.lim;
    uint8_t *bytes = NULL;
    size_t n = 0;
    int st = sdxl_b64_decode(im->str, im->len, l->max_image_bytes, "image", &bytes, &n, &e);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, "bad_image", "image", "%s", e.msg);
        return;
    }
    sdxl_image_limits il;
    sdxl_image_limits_init(&il);
    il.max_bytes = l->max_image_bytes;
    il.max_pixels = l->max_pixels;
    sdxl_image src = {0}, fit = {0}, out = {0}, small = {0};
    st = sdxl_image_decode(bytes, n, "image", &il, 3, &src, NULL, &e);
    free(bytes);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, "bad_image", "image", "%s", e.msg);
        return;
    }
    if (!W) W = src.width;
    if (!H) H = src.height;
    if ((uint64_t)W * (uint64_t)H > l->max_pixels) {
        sdxl_image_free(&src);
        srv_error(r, 413, "limit", "width", "width x height: %d x %d is more than the server's %llu pixels", W, H,
                  (unsigned long long)l->max_pixels);
        return;
    }
    /* fitted and preprocessed at the output size (what the job's ControlNet sees), then shrunk to
     * max_side for the preview */
    int pw = W, ph = H;
    if (pw > max_side || ph > max_side) {
        double s = (double)max_side / (pw > ph ? pw : ph);
        pw = (int)lround(pw * s);
        ph = (int)lround(ph * s);
        if (pw < 1) pw = 1;
        if (ph < 1) ph = 1;
    }
    st = sdxl_image_alloc(&fit, W, H, 3, &e);
    if (!st) st = sdxl_image_alloc(&out, W, H, 3, &e);
    if (!st) st = sdxl_control_fit(src.data, src.width, src.height, mode, fit.data, W, H, &e);
    if (!st) st = sdxl_preprocess_run(&pp, fit.data, W, H, out.data, &e);
    const sdxl_image *show = &out;
    if (!st && (pw != W || ph != H)) {
        st = sdxl_image_alloc(&small, pw, ph, 3, &e);
        if (!st) st = sdxl_resize_u8(out.data, W, H, 3, small.data, pw, ph, "preview", &e);
        show = &small;
    }
    uint8_t *png = NULL;
    size_t png_len = 0;
    if (!st) {
        sdxl_image_write_opts wo;
        sdxl_image_write_opts_init(&wo);
        wo.png_compression = 3;
        st = sdxl_image_encode(show, SDXL_IMAGE_PNG, &wo, NULL, NULL, &png, &png_len, &e);
    }
    sdxl_image_free(&src);
    sdxl_image_free(&fit);
    sdxl_image_free(&out);
    sdxl_image_free(&small);
    if (st) {
        srv_error(r, srv_status_http(st), st == SDXL_ERR_NOMEM ? "nomem" : "preprocess_failed", "preprocess", "%s",
                  e.msg);
        return;
    }
    char dims[32];
    snprintf(dims, sizeof dims, "%dx%d", W, H);
    srv_header(r, "X-Output-Size", dims);
    srv_bytes(r, 200, "image/png", png, png_len);
    free(png);
}
