/* LoRA references: names resolved inside the configured folders only, and A1111 prompt tags. */
#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "adapters/lora.h"

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The real path of dir/name if it is a regular file whose real path lies inside the real dir. */
static int inside(const char *dir, const char *name, char *out, size_t cap) {
    char rdir[PATH_MAX], cand[PATH_MAX * 2], rcand[PATH_MAX];
    if (!realpath(dir, rdir)) return 0;
    if (snprintf(cand, sizeof cand, "%s/%s", dir, name) >= (int)sizeof cand) return 0;
    if (!realpath(cand, rcand) || !is_file(rcand)) return 0;
    size_t n = strlen(rdir);
    if (strncmp(rcand, rdir, n) != 0 || (rcand[n] != '/' && strcmp(rdir, "/") != 0)) return 0;
    if (strlen(rcand) >= cap) return 0;
    memcpy(out, rcand, strlen(rcand) + 1);
    return 1;
}

int sdxl_lora_resolve(const char *name, const char *const *dirs, int n_dirs, int allow_paths, char *out, size_t cap,
                      sdxl_err *e) {
    if (!name || !*name) return sdxl_seterr(e, SDXL_ERR_ARG, "lora: empty name");
    if (allow_paths && is_file(name)) {
        if (strlen(name) >= cap) return sdxl_seterr(e, SDXL_ERR_ARG, "lora: path too long");
        memcpy(out, name, strlen(name) + 1);
        return SDXL_OK;
    }
    if (allow_paths && name[0] == '/') return sdxl_seterr(e, SDXL_ERR_IO, "lora \"%s\": no such file", name);
    if (name[0] == '/')
        return sdxl_seterr(e, SDXL_ERR_ARG, "lora \"%s\": absolute paths are not allowed here; give a name inside "
                           "a LoRA folder", name);
    for (const char *p = name; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return sdxl_seterr(e, SDXL_ERR_ARG, "lora \"%s\": \"..\" is not allowed in a LoRA name", name);
        p += len + (q != NULL);
    }
    if (n_dirs <= 0 || !dirs)
        return sdxl_seterr(e, SDXL_ERR_ARG, "lora \"%s\": not a file, and no LoRA folder is configured (--lora-dir)",
                           name);
    char withext[PATH_MAX];
    snprintf(withext, sizeof withext, "%s.safetensors", name);
    for (int i = 0; i < n_dirs; i++) {
        if (!dirs[i]) continue;
        if (inside(dirs[i], name, out, cap) || inside(dirs[i], withext, out, cap)) return SDXL_OK;
    }
    return sdxl_seterr(e, SDXL_ERR_IO, "lora \"%s\": not found in the %d LoRA folder%s (symlinks leaving a folder are "
                       "not followed)", name, n_dirs, n_dirs == 1 ? "" : "s");
}

int sdxl_lora_find_hash(const char *hash, const char *const *dirs, int n_dirs, char *out, size_t cap, sdxl_err *e) {
    size_t hl = hash ? strlen(hash) : 0;
    if (hl < 10 || hl > 64) return sdxl_seterr(e, SDXL_ERR_ARG, "lora hash \"%s\": expected 10..64 hex digits", hash);
    for (size_t i = 0; i < hl; i++)
        if (!isxdigit((unsigned char)hash[i]))
            return sdxl_seterr(e, SDXL_ERR_ARG, "lora hash \"%s\": expected hex digits", hash);
    for (int d = 0; d < n_dirs; d++) {
        DIR *dp = dirs && dirs[d] ? opendir(dirs[d]) : NULL;
        if (!dp) continue;
        struct dirent *de;
        while ((de = readdir(dp))) {
            size_t l = strlen(de->d_name);
            char full[PATH_MAX], h[65];
            if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors") || !inside(dirs[d], de->d_name, full, sizeof full))
                continue;
            if (sdxl_lora_hash_file(full, h) == SDXL_OK && !strncasecmp(h, hash, hl) && strlen(full) < cap) {
                memcpy(out, full, strlen(full) + 1);
                closedir(dp);
                return SDXL_OK;
            }
        }
        closedir(dp);
    }
    return sdxl_seterr(e, SDXL_ERR_IO, "lora hash %s: no file with that hash in the LoRA folders", hash);
}

static int parse_weight(const char *s, size_t n, float *out) {
    char buf[64];
    if (n == 0 || n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end;
    double v = strtod(buf, &end);
    while (*end && isspace((unsigned char)*end)) end++;
    if (*end || !isfinite(v)) return 0;
    *out = (float)v;
    return 1;
}

int sdxl_lora_tags_extract(const char *prompt, char *out, sdxl_lora_tag *tags, int max, int *n_tags, sdxl_err *e) {
    *n_tags = 0;
    size_t o = 0;
    const char *p = prompt ? prompt : "";
    while (*p) {
        if (strncmp(p, "<lora:", 6) != 0) {
            out[o++] = *p++;
            continue;
        }
        const char *end = strchr(p, '>');
        if (!end) return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: unterminated tag \"%.40s\"", p);
        const char *f[4];
        size_t fl[4];
        int nf = 0;
        const char *q = p + 6;
        while (nf < 4) {
            const char *c = memchr(q, ':', (size_t)(end - q));
            f[nf] = q;
            fl[nf] = c ? (size_t)(c - q) : (size_t)(end - q);
            nf++;
            if (!c) break;
            q = c + 1;
        }
        if (nf > 3 || fl[0] == 0 || fl[0] >= sizeof tags[0].name)
            return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: bad LoRA tag \"%.*s\" (expected <lora:name:w> or "
                               "<lora:name:unet_w:te_w>)", (int)(end - p + 1), p);
        if (*n_tags >= max)
            return sdxl_seterr(e, SDXL_ERR_LIMIT, "prompt: more than %d LoRA tags", max);
        sdxl_lora_tag *t = &tags[(*n_tags)++];
        memcpy(t->name, f[0], fl[0]);
        t->name[fl[0]] = 0;
        /* A1111 (extra_networks_lora.py): positional 1 = te multiplier, positional 2 = unet
         * multiplier (default: the te one); named te= and unet= override. */
        float pos[2] = {1.0f, 1.0f}, named[2] = {NAN, NAN};
        int npos = 0;
        for (int k = 1; k < nf; k++) {
            const char *v = f[k];
            size_t vl = fl[k];
            int slot = -1;
            if (vl > 3 && !strncmp(v, "te=", 3)) slot = 0, v += 3, vl -= 3;
            else if (vl > 5 && !strncmp(v, "unet=", 5)) slot = 1, v += 5, vl -= 5;
            float x;
            if (!parse_weight(v, vl, &x))
                return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: LoRA tag \"%.*s\": weight \"%.*s\" is not a number",
                                   (int)(end - p + 1), p, (int)fl[k], f[k]);
            if (slot >= 0) named[slot] = x;
            else pos[npos++] = x;
        }
        t->te_weight = pos[0];
        t->unet_weight = npos > 1 ? pos[1] : t->te_weight;
        if (!isnan(named[0])) t->te_weight = named[0];
        if (!isnan(named[1])) t->unet_weight = named[1];
        p = end + 1;
    }
    out[o] = 0;
    return SDXL_OK;
}
