/* Helpers shared by the handlers: engine access, request limits, image checks, issue lists,
 * file listings. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/image.h"
#include "serve/b64.h"
#include "serve/internal.h"
#include "service/engine.h"

struct sdxl_engine *srv_eng(srv_req *r) {
    pthread_rwlock_rdlock(&r->srv->eng_lock);
    if (r->srv->eng) return r->srv->eng;
    pthread_rwlock_unlock(&r->srv->eng_lock);
    srv_header(r, "Retry-After", "5");
    srv_error(r, 503, "shutting_down", NULL, "the server is shutting down");
    return NULL;
}

void srv_eng_done(srv_req *r) { pthread_rwlock_unlock(&r->srv->eng_lock); }

int srv_read_file(const char *path, size_t max, uint8_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        return -1;
    }
    size_t sz = (size_t)st.st_size;
    uint8_t *p = malloc(sz ? sz : 1);
    size_t got = 0;
    while (p && got < sz) {
        ssize_t k = read(fd, p + got, sz - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (!p || got != sz) {
        free(p);
        return -1;
    }
    *out = p;
    *n = sz;
    return 0;
}

int srv_check_request(srv_req *r, const struct sdxl_svc_request *q) {
    const sdxl_serve_limits *l = &r->srv->o.lim;
    const char *pf = r->a1111 ? "prompt" : "prompt", *nf = "negative_prompt";
    if (q->g.prompt && strlen(q->g.prompt) > l->max_prompt) {
        srv_error(r, 422, "value_error.prompt_too_long", pf, "prompt: %zu bytes, the limit is %zu",
                  strlen(q->g.prompt), l->max_prompt);
        return -1;
    }
    if (q->g.negative_prompt && strlen(q->g.negative_prompt) > l->max_prompt) {
        srv_error(r, 422, "value_error.prompt_too_long", nf, "negative_prompt: %zu bytes, the limit is %zu",
                  strlen(q->g.negative_prompt), l->max_prompt);
        return -1;
    }
    long long n = (long long)(q->g.batch_size > 0 ? q->g.batch_size : 1) * (q->g.batch_count > 0 ? q->g.batch_count : 1);
    if (n > l->max_images) {
        const char *f = r->a1111 ? "batch_size" : "batch_size";
        srv_error(r, 422, "value_error.too_many_images", f,
                  "batch_size x n_iter asks for %lld images, the limit is %d per request", n, l->max_images);
        return -1;
    }
    return 0;
}

int srv_check_image(srv_req *r, const char *field, const char *b64) {
    const sdxl_serve_limits *l = &r->srv->o.lim;
    sdxl_err e = {0};
    uint8_t *bytes = NULL;
    size_t n = 0;
    int st = sdxl_b64_decode(b64, strlen(b64), l->max_image_bytes, field, &bytes, &n, &e);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, st == SDXL_ERR_LIMIT ? "value_error.image_too_large"
                                                                            : "value_error.base64",
                  field, "%s", e.msg);
        return -1;
    }
    sdxl_image_limits il;
    sdxl_image_limits_init(&il);
    il.max_bytes = l->max_image_bytes;
    il.max_pixels = l->max_pixels;
    sdxl_image img = {0};
    st = sdxl_image_decode(bytes, n, field, &il, 3, &img, NULL, &e);
    free(bytes);
    sdxl_image_free(&img);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, st == SDXL_ERR_LIMIT ? "value_error.image_too_large"
                                                                           : "value_error.image",
                  field, "%s", e.msg);
        return -1;
    }
    return 0;
}

/* "loras[1].weight" -> ,"loras",1,"weight" */
static void loc_parts(sdxl_strbuf *b, const char *field) {
    const char *p = field;
    char part[128];
    while (*p) {
        size_t k = 0;
        if (*p == '[') {
            p++;
            while (*p && *p != ']' && k + 1 < sizeof part) part[k++] = *p++;
            if (*p == ']') p++;
            part[k] = 0;
            sdxl_sb_printf(b, ",%s", k && strspn(part, "0123456789") == k ? part : "0");
        } else {
            while (*p && *p != '.' && *p != '[' && k + 1 < sizeof part) part[k++] = *p++;
            part[k] = 0;
            if (k) {
                sdxl_sb_str(b, ",");
                sdxl_sb_json(b, part);
            }
        }
        if (*p == '.') p++;
    }
}

void srv_issues(srv_req *r, const struct sdxl_svc_issues *is) {
    sdxl_strbuf b = {0};
    if (r->a1111) {
        sdxl_sb_str(&b, "{\"detail\":[");
        for (int i = 0; i < is->n; i++) {
            const sdxl_svc_issue *it = &is->items[i];
            sdxl_sb_str(&b, i ? ",{\"loc\":[\"body\"" : "{\"loc\":[\"body\"");
            loc_parts(&b, it->field);
            sdxl_sb_str(&b, "],\"msg\":");
            sdxl_sb_json(&b, it->message);
            sdxl_sb_str(&b, ",\"type\":");
            sdxl_sb_json(&b, it->code);
            sdxl_sb_str(&b, "}");
        }
        sdxl_sb_str(&b, "]}");
    } else {
        char joined[2048];
        sdxl_svc_issues_join(is, joined, sizeof joined);
        sdxl_sb_str(&b, "{\"error\":{\"code\":\"invalid_request\",\"message\":");
        sdxl_sb_json(&b, joined);
        sdxl_sb_str(&b, ",\"issues\":[");
        for (int i = 0; i < is->n; i++) {
            const sdxl_svc_issue *it = &is->items[i];
            sdxl_sb_str(&b, i ? ",{\"code\":" : "{\"code\":");
            sdxl_sb_json(&b, it->code);
            sdxl_sb_str(&b, ",\"field\":");
            sdxl_sb_json(&b, it->field);
            sdxl_sb_str(&b, ",\"message\":");
            sdxl_sb_json(&b, it->message);
            sdxl_sb_str(&b, "}");
        }
        sdxl_sb_str(&b, "]}}");
    }
    srv_take_json(r, 422, &b);
}

static int has_ext(const char *name) {
    size_t n = strlen(name);
    return n > 12 && !strcasecmp(name + n - 12, ".safetensors");
}

static void walk(const char *root, const char *rel, int depth, int *first, sdxl_strbuf *b) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char path[4096], sub[2048];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        struct stat st;
        if (lstat(path, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth > 0) walk(root, sub, depth - 1, first, b);
        } else if (has_ext(de->d_name) && (S_ISREG(st.st_mode) || (S_ISLNK(st.st_mode) && !stat(path, &st) &&
                                                                     S_ISREG(st.st_mode)))) {
            /* a linked file lists with its target's size; links to folders are never walked */
            sub[strlen(sub) - 12] = 0;
            sdxl_sb_str(b, *first ? "{\"name\":" : ",{\"name\":");
            sdxl_sb_json(b, sub);
            sdxl_sb_str(b, ",\"path\":");
            sdxl_sb_json(b, path);
            sdxl_sb_printf(b, ",\"bytes\":%lld}", (long long)st.st_size);
            *first = 0;
        }
    }
    closedir(d);
}

void srv_list_files(const char *const *roots, int n_roots, const char *const *subdirs, sdxl_strbuf *b) {
    int first = 1;
    sdxl_sb_str(b, "[");
    for (int i = 0; i < n_roots; i++) {
        if (!roots[i]) continue;
        if (!subdirs) {
            walk(roots[i], "", 3, &first, b);
            continue;
        }
        for (int k = 0; subdirs[k]; k++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", roots[i], subdirs[k]);
            walk(p, "", 3, &first, b);
        }
    }
    sdxl_sb_str(b, "]");
}
