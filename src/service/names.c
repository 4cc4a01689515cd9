/* Name resolution confined to configured roots, base64, latent previews. See names.h. */
#include "service/names.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/image.h"

enum { K_MODEL, K_VAE, K_LORA, K_CONTROL, K_INPUT };

static int kind_index(const char *kind) {
    static const char *const n[] = {"model", "vae", "lora", "control", "input"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(kind, n[i])) return i;
    return -1;
}

static int add_dirs(sdxl_svc_roots *r, int k, const char *const *dirs, int n, char *err, size_t cap) {
    for (int i = 0; i < n; i++) {
        char rp[PATH_MAX];
        if (!realpath(dirs[i], rp)) {
            snprintf(err, cap, "root folder %s does not exist", dirs[i]);
            return SDXL_ERR_ARG;
        }
        char **nd = realloc(r->dirs[k], (size_t)(r->n[k] + 1) * sizeof *nd);
        if (!nd) return SDXL_ERR_NOMEM;
        r->dirs[k] = nd;
        nd[r->n[k]] = strdup(rp);
        if (!nd[r->n[k]]) return SDXL_ERR_NOMEM;
        r->n[k]++;
    }
    return SDXL_OK;
}

static int inside(const char *root, const char *path);

/* The operator's -m naming an existing file (or diffusers folder) that no model root holds. */
static int pin_default(sdxl_svc_roots *r, const char *model) {
    char rp[PATH_MAX];
    struct stat sb;
    if (!model || model[0] != '/' || stat(model, &sb) || !realpath(model, rp)) return SDXL_OK;
    for (int i = 0; i < r->n[K_MODEL]; i++)
        if (inside(r->dirs[K_MODEL][i], rp)) return SDXL_OK;
    r->pinned = strdup(rp);
    return r->pinned ? SDXL_OK : SDXL_ERR_NOMEM;
}

/* 1 when name means the pinned model: its path, its file name, or its stem. */
static int is_pinned(const sdxl_svc_roots *r, const char *name) {
    if (!r->pinned) return 0;
    char rp[PATH_MAX];
    if (name[0] == '/') return realpath(name, rp) && !strcmp(rp, r->pinned);
    const char *b = strrchr(r->pinned, '/') + 1;
    size_t n = strlen(name);
    if (!strcmp(name, b)) return 1;
    static const char *const ext[] = {".safetensors", ".sft"};
    for (int i = 0; i < 2; i++)
        if (strlen(b) == n + strlen(ext[i]) && !strncmp(b, name, n) && !strcmp(b + n, ext[i])) return 1;
    return 0;
}

int sdxl_svc_roots_init(sdxl_svc_roots *r, const sdxl_engine_config *c, char *err, size_t cap) {
    memset(r, 0, sizeof *r);
    int st = add_dirs(r, K_MODEL, c->models_dirs, c->n_models_dirs, err, cap);
    if (!st) st = add_dirs(r, K_VAE, c->vae_dirs, c->n_vae_dirs, err, cap);
    if (!st) st = add_dirs(r, K_LORA, c->lora_dirs, c->n_lora_dirs, err, cap);
    if (!st) st = add_dirs(r, K_CONTROL, c->control_dirs, c->n_control_dirs, err, cap);
    if (!st) st = add_dirs(r, K_INPUT, c->input_dirs, c->n_input_dirs, err, cap);
    /* the per-kind folders come first; the model roots serve every model-like kind */
    for (int k = K_VAE; !st && k <= K_CONTROL; k++)
        st = add_dirs(r, k, c->models_dirs, c->n_models_dirs, err, cap);
    if (!st) st = pin_default(r, c->default_model);
    if (st) sdxl_svc_roots_free(r);
    return st;
}

void sdxl_svc_roots_free(sdxl_svc_roots *r) {
    for (int k = 0; k < 5; k++) {
        for (int i = 0; i < r->n[k]; i++) free(r->dirs[k][i]);
        free(r->dirs[k]);
    }
    free(r->pinned);
    memset(r, 0, sizeof *r);
}

static int inside(const char *root, const char *path) {
    size_t n = strlen(root);
    return !strncmp(root, path, n) && (path[n] == '/' || (n == 1 && root[0] == '/'));
}

/* 1 found (out set), 0 absent, -1 exists but its real path leaves the root. */
static int try_path(const char *root, const char *rel, const char *suffix, char *out, size_t cap) {
    char p[PATH_MAX * 2], rp[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s%s", root, rel, suffix);
    struct stat sb;
    if (stat(p, &sb)) return 0;
    if (!realpath(p, rp)) return 0;
    if (!inside(root, rp)) return -1;
    if (strlen(rp) >= cap) return 0;
    snprintf(out, cap, "%s", rp);
    return 1;
}

int sdxl_svc_resolve(const sdxl_svc_roots *r, const char *kind, const char *name, char *out, size_t cap, char *err,
                     size_t err_cap) {
    int k = kind_index(kind);
    out[0] = 0;
    if (k < 0) {
        snprintf(err, err_cap, "unknown kind %s", kind);
        return SDXL_ERR_ARG;
    }
    if (!name || !*name || strlen(name) > 1024) {
        snprintf(err, err_cap, "a %s name is required (1..1024 bytes)", kind);
        return SDXL_ERR_ARG;
    }
    if (strstr(name, "..") || strchr(name, '\\')) {
        snprintf(err, err_cap, "\"%.80s\" refused: \"..\" and backslashes may not appear in names", name);
        return SDXL_ERR_ARG;
    }
    if (k == K_MODEL && is_pinned(r, name) && strlen(r->pinned) < cap) {
        snprintf(out, cap, "%s", r->pinned);
        return SDXL_OK;
    }
    if (!r->n[k]) {
        snprintf(err, err_cap, "\"%.80s\" refused: no %s folder is configured", name, kind);
        return SDXL_ERR_ARG;
    }
    static const char *const suffixes[] = {"", ".safetensors", ".sft", ".png", ".jpg", ".jpeg", ".webp"};
    int n_suf = k == K_INPUT ? 1 : 3;
    int refused = 0;
    const char *rel = name;
    char stem[512] = "";
    if (name[0] == '/') {
        /* an absolute path counts when it lies inside a root; else only its file stem is looked up there */
        char rp[PATH_MAX];
        if (realpath(name, rp))
            for (int i = 0; i < r->n[k]; i++)
                if (inside(r->dirs[k][i], rp) && strlen(rp) < cap) {
                    snprintf(out, cap, "%s", rp);
                    return SDXL_OK;
                }
        const char *b = strrchr(name, '/') + 1;
        snprintf(stem, sizeof stem, "%s", b);
        char *dot = strrchr(stem, '.');
        if (dot && (!strcmp(dot, ".safetensors") || !strcmp(dot, ".sft") || !strcmp(dot, ".ckpt"))) *dot = 0;
        if (!*stem || k == K_INPUT) {
            snprintf(err, err_cap, "\"%.80s\" refused: outside the configured %s folders", name, kind);
            return SDXL_ERR_ARG;
        }
        rel = stem;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < r->n[k]; i++)
            for (int s = 0; s < n_suf; s++) {
                int t = try_path(r->dirs[k][i], rel, suffixes[s], out, cap);
                if (t > 0) return SDXL_OK;
                if (t < 0) refused = 1;
            }
        /* "org/name": also the last component alone */
        const char *slash = strrchr(rel, '/');
        if (!slash || k == K_INPUT) break;
        rel = slash + 1;
    }
    if (refused) snprintf(err, err_cap, "\"%.80s\" refused: it links outside the configured %s folders", name, kind);
    else snprintf(err, err_cap, "%s \"%.80s\" not found in the %s folders (%s%s)", kind, name, kind, r->dirs[k][0],
                  r->n[k] > 1 ? ", ..." : "");
    return SDXL_ERR_ARG;
}

static void list_dir(const char *root, const char *sub, sdxl_strbuf *b, int *first, int depth) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s%s%s", root, *sub ? "/" : "", sub);
    DIR *d = opendir(p);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char rel[PATH_MAX], full[PATH_MAX * 2];
        snprintf(rel, sizeof rel, "%s%s%s", sub, *sub ? "/" : "", de->d_name);
        snprintf(full, sizeof full, "%s/%s", root, rel);
        struct stat sb;
        if (stat(full, &sb)) continue;
        size_t n = strlen(rel);
        if (S_ISREG(sb.st_mode) && n > 12 && !strcmp(rel + n - 12, ".safetensors")) {
            sdxl_sb_str(b, *first ? "{\"name\":" : ",{\"name\":");
            rel[n - 12] = 0;
            sdxl_sb_json(b, rel);
            sdxl_sb_str(b, ",\"path\":");
            sdxl_sb_json(b, full);
            sdxl_sb_printf(b, ",\"bytes\":%llu}", (unsigned long long)sb.st_size);
            *first = 0;
        } else if (S_ISDIR(sb.st_mode)) {
            char mi[PATH_MAX * 2 + 32];
            snprintf(mi, sizeof mi, "%s/model_index.json", full);
            if (!stat(mi, &sb)) {
                sdxl_sb_str(b, *first ? "{\"name\":" : ",{\"name\":");
                sdxl_sb_json(b, rel);
                sdxl_sb_str(b, ",\"path\":");
                sdxl_sb_json(b, full);
                sdxl_sb_str(b, ",\"bytes\":0}");
                *first = 0;
            } else if (depth < 1) {
                list_dir(root, rel, b, first, depth + 1);
            }
        }
    }
    closedir(d);
}

int sdxl_svc_list_models(const sdxl_svc_roots *r, sdxl_strbuf *b) {
    int first = 1;
    sdxl_sb_str(b, "[");
    for (int i = 0; i < r->n[K_MODEL]; i++) list_dir(r->dirs[K_MODEL][i], "", b, &first, 0);
    struct stat sb;
    if (r->pinned && !stat(r->pinned, &sb)) {
        char stem[PATH_MAX];
        snprintf(stem, sizeof stem, "%s", strrchr(r->pinned, '/') + 1);
        size_t n = strlen(stem);
        if (n > 12 && !strcmp(stem + n - 12, ".safetensors")) stem[n - 12] = 0;
        sdxl_sb_str(b, first ? "{\"name\":" : ",{\"name\":");
        sdxl_sb_json(b, stem);
        sdxl_sb_str(b, ",\"path\":");
        sdxl_sb_json(b, r->pinned);
        sdxl_sb_printf(b, ",\"bytes\":%llu}", S_ISREG(sb.st_mode) ? (unsigned long long)sb.st_size : 0ULL);
    }
    sdxl_sb_str(b, "]");
    return b->oom ? SDXL_ERR_NOMEM : SDXL_OK;
}

/* ---- base64 ------------------------------------------------------------------------------------ */

static int b64v(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

int sdxl_svc_is_base64(const char *s) {
    if (!strncmp(s, "data:", 5)) return 1;
    size_t n = strlen(s);
    if (n < 64) return 0;
    for (size_t i = 0; i < n; i++)
        if (b64v((unsigned char)s[i]) < 0 && s[i] != '=' && s[i] != '\n' && s[i] != '\r') return 0;
    return 1;
}

int sdxl_svc_base64_decode(const char *s, uint8_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    if (!strncmp(s, "data:", 5)) {
        const char *c = strchr(s, ',');
        if (!c) return SDXL_ERR_FORMAT;
        s = c + 1;
    }
    size_t len = strlen(s);
    uint8_t *p = malloc(len / 4 * 3 + 3);
    if (!p) return SDXL_ERR_NOMEM;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '\n' || c == '\r' || c == ' ') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64v(c);
        if (v < 0 || pad) {
            free(p);
            return SDXL_ERR_FORMAT;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            p[k++] = (uint8_t)(acc >> bits);
        }
    }
    if (pad > 2 || !k) {
        free(p);
        return SDXL_ERR_FORMAT;
    }
    *out = p;
    *n = k;
    return SDXL_OK;
}

void sdxl_svc_base64_encode(const uint8_t *p, size_t n, sdxl_strbuf *b) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        q[0] = t[(v >> 18) & 63];
        q[1] = t[(v >> 12) & 63];
        q[2] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        q[3] = i + 2 < n ? t[v & 63] : '=';
        sdxl_sb_put(b, q, 4);
    }
}

/* ---- previews ----------------------------------------------------------------------------------- */

int sdxl_svc_preview_png(const float *x, size_t n, int w, int h, uint8_t **png, size_t *len) {
    /* SDXL latent -> RGB least-squares projection (the factors ComfyUI and A1111 use for SDXL) */
    static const float f[4][3] = {
        {0.3651f, 0.4232f, 0.4341f}, {-0.2533f, -0.0042f, 0.1068f}, {0.1076f, 0.1111f, -0.0362f}, {-0.3165f, -0.2492f, -0.2188f}};
    static const float bias[3] = {0.1084f, -0.0175f, -0.0011f};
    size_t hw = (size_t)w * (size_t)h;
    if (w <= 0 || h <= 0 || n < 4 * hw) return SDXL_ERR_ARG;
    sdxl_image img = {0};
    if (sdxl_image_alloc(&img, w, h, 3, NULL)) return SDXL_ERR_NOMEM;
    for (size_t i = 0; i < hw; i++)
        for (int c = 0; c < 3; c++) {
            float v = bias[c];
            for (int k = 0; k < 4; k++) v += x[k * hw + i] * f[k][c];
            v = (v + 1.0f) * 127.5f;
            img.data[i * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
        }
    int st = sdxl_image_encode(&img, SDXL_IMAGE_PNG, NULL, NULL, NULL, png, len, NULL);
    sdxl_image_free(&img);
    return st;
}
