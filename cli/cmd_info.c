/* `sdxl info FILE_OR_FOLDER [--json]`: validates a model file or folder and describes it:
 * layout, per-part naming and parameter counts, the UNet and VAE configs read from the shapes
 * (every expected tensor checked), metadata, and every tensor. Exit 1 with the full message on
 * a bad file, 2 on usage errors. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/lora.h"
#include "cli.h"
#include "io/prediction.h"
#include "decode/vae.h"
#include "denoise/unet.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "sdxl.h"

static void jstr(FILE *o, const char *s) {
    size_t n = strlen(s), need = sdxl_json_escape(NULL, 0, s, n);
    char small[512], *b = need < sizeof small ? small : malloc(need + 1);
    if (!b) return;
    sdxl_json_escape(b, need + 1, s, n);
    fputs(b, o);
    if (b != small) free(b);
}

static void shape_text(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId64, i ? "," : "", shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Thousands separators for parameter counts. */
static const char *grouped(char *buf, size_t cap, uint64_t v) {
    char raw[32];
    int n = snprintf(raw, sizeof raw, "%" PRIu64, v), o = 0;
    for (int i = 0; i < n && (size_t)o + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = 0;
    return buf;
}

static uint64_t file_params(const sdxl_st_file *f) {
    uint64_t s = 0;
    for (size_t i = 0; i < sdxl_st_count(f); i++) s += sdxl_st_at(f, i)->numel;
    return s;
}

/* One file's metadata and tensor table. */
static void print_file(FILE *o, const sdxl_st_file *f, int json) {
    char sh[256];
    if (json) {
        fputs("{\"path\":", o);
        jstr(o, sdxl_st_path(f));
        fprintf(o, ",\"tensors_count\":%zu,\"parameters\":%" PRIu64 ",\"metadata\":{", sdxl_st_count(f), file_params(f));
        for (size_t i = 0; i < sdxl_st_meta_count(f); i++) {
            const char *k, *v;
            sdxl_st_meta_at(f, i, &k, &v);
            fputs(i ? "," : "", o);
            jstr(o, k);
            fputc(':', o);
            jstr(o, v);
        }
        fputs("},\"tensors\":[", o);
        for (size_t i = 0; i < sdxl_st_count(f); i++) {
            const sdxl_st_tensor *t = sdxl_st_at(f, i);
            shape_text(sh, sizeof sh, t->ndim, t->shape);
            fputs(i ? ",{\"name\":" : "{\"name\":", o);
            jstr(o, t->name);
            fprintf(o, ",\"dtype\":\"%s\",\"shape\":%s}", sdxl_st_dtype_name(t->dtype), sh);
        }
        fputs("]}", o);
        return;
    }
    char g[40];
    fprintf(o, "\nfile: %s\n  tensors: %zu, parameters: %s\n", sdxl_st_path(f), sdxl_st_count(f),
            grouped(g, sizeof g, file_params(f)));
    if (sdxl_st_meta_count(f)) fprintf(o, "  metadata:\n");
    for (size_t i = 0; i < sdxl_st_meta_count(f); i++) {
        const char *k, *v;
        sdxl_st_meta_at(f, i, &k, &v);
        fprintf(o, "    %s: %s\n", k, v);
    }
    fprintf(o, "  tensors (data order):\n");
    for (size_t i = 0; i < sdxl_st_count(f); i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        shape_text(sh, sizeof sh, t->ndim, t->shape);
        fprintf(o, "    %-4s %-20s %s\n", sdxl_st_dtype_name(t->dtype), sh, t->name);
    }
}

/* One part's summary line (text) or object (JSON). Network config detection (base/refiner,
 * channels, depths, context width) belongs with this line once the networks expose it. */
static void print_part(FILE *o, const sdxl_ckpt *c, sdxl_part p, int json, int first) {
    const char *prefix = sdxl_ckpt_prefix(c, p);
    if (json) {
        fputs(first ? "" : ",", o);
        jstr(o, sdxl_part_name(p));
        fprintf(o, ":{\"naming\":\"%s\",\"prefix\":", sdxl_naming_name(sdxl_ckpt_naming(c, p)));
        jstr(o, prefix);
        fputs(",\"file\":", o);
        jstr(o, sdxl_st_path(sdxl_ckpt_file(c, p)));
        fprintf(o, ",\"tensors\":%zu,\"parameters\":%" PRIu64 "}", sdxl_ckpt_count(c, p), sdxl_ckpt_params(c, p));
        return;
    }
    char g[40];
    fprintf(o, "  %-15s %-10s %8zu %15s  %s%s%s\n", sdxl_part_name(p), sdxl_naming_name(sdxl_ckpt_naming(c, p)),
            sdxl_ckpt_count(c, p), grouped(g, sizeof g, sdxl_ckpt_params(c, p)), *prefix ? prefix : "",
            *prefix ? " in " : "", sdxl_st_path(sdxl_ckpt_file(c, p)));
}

/* Network configs from the shapes; validation only, nothing converted. */
typedef struct net_configs {
    int has_unet, has_vae;
    sdxl_unet_cfg unet;
    sdxl_vae_config vae;
} net_configs;

static int detect_configs(const sdxl_ckpt *c, net_configs *nc, sdxl_err *e) {
    memset(nc, 0, sizeof *nc);
    if (sdxl_ckpt_file(c, SDXL_PART_UNET)) {
        sdxl_unet_opts uo;
        sdxl_unet_opts_init(&uo);
        uo.validate_only = 1;
        sdxl_unet *u = NULL;
        int st = sdxl_unet_load(NULL, c, &uo, &u, e);
        if (st != SDXL_OK) return st;
        nc->unet = *sdxl_unet_config(u);
        nc->unet.heads_rule = NULL; /* points into u */
        nc->has_unet = 1;
        sdxl_unet_free(u);
    }
    if (sdxl_ckpt_file(c, SDXL_PART_VAE)) {
        int st = sdxl_vae_validate(c, &nc->vae, e);
        if (st != SDXL_OK) return st;
        nc->has_vae = 1;
    }
    return SDXL_OK;
}

static void int_list(char *buf, size_t cap, const char *sep, const int64_t *v, int n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId64, i ? sep : "", v[i]);
}

static void print_configs(FILE *o, const net_configs *nc, int json) {
    char a[160], b[160], h[160];
    int64_t v[SDXL_UNET_MAX_LEVELS > SDXL_VAE_MAX_LEVELS ? SDXL_UNET_MAX_LEVELS : SDXL_VAE_MAX_LEVELS];
    if (nc->has_unet) {
        const sdxl_unet_cfg *u = &nc->unet;
        int_list(a, sizeof a, json ? "," : "/", u->ch, u->levels);
        for (int i = 0; i < u->levels; i++) v[i] = u->down_depth[i];
        int_list(b, sizeof b, json ? "," : "/", v, u->levels);
        for (int i = 0; i < u->levels; i++) v[i] = u->heads[i];
        int_list(h, sizeof h, json ? "," : "/", v, u->levels);
        if (json)
            fprintf(o, "\"unet\":{\"kind\":\"%s\",\"levels\":%d,\"channels\":[%s],\"transformer_depth\":[%s],"
                       "\"mid_depth\":%d,\"heads\":[%s],\"context_dim\":%" PRId64 ",\"add_embedding_in\":%" PRId64
                       ",\"in_channels\":%" PRId64 ",\"out_channels\":%" PRId64 ",\"parameters\":%" PRId64 "}",
                    u->is_refiner ? "refiner" : "base", u->levels, a, b, u->mid_depth, h, u->context_dim, u->adm_in,
                    u->in_ch, u->out_ch, u->n_params);
        else
            fprintf(o,
                    "unet: %s, %d levels, channels %s, transformer depth %s (mid %d), heads %s, context %" PRId64
                    ", add-embedding in %" PRId64 ", in/out channels %" PRId64 "/%" PRId64 "%s\n",
                    u->is_refiner ? "refiner" : "base", u->levels, a, b, u->mid_depth, h, u->context_dim, u->adm_in,
                    u->in_ch, u->out_ch, u->in_ch == 9 ? " (inpainting)" : "");
    }
    if (nc->has_vae) {
        const sdxl_vae_config *vc = &nc->vae;
        for (int i = 0; i < vc->n_levels; i++) v[i] = vc->ch[i];
        int_list(a, sizeof a, json ? "," : "/", v, vc->n_levels);
        if (json)
            fprintf(o, "%s\"vae\":{\"levels\":%d,\"channels\":[%s],\"latent_channels\":%d,\"scaling_factor\":%g,"
                       "\"has_encoder\":%s,\"parameters\":%" PRId64 "}",
                    nc->has_unet ? "," : "", vc->n_levels, a, vc->latent_channels, (double)vc->scaling_factor,
                    vc->has_encoder ? "true" : "false",
                    vc->n_params);
        else
            fprintf(o, "vae: %d levels, channels %s, latent channels %d, scaling factor %g%s\n", vc->n_levels, a,
                    vc->latent_channels, (double)vc->scaling_factor, vc->has_encoder ? "" : ", decoder only");
    }
}

static void print_ckpt(FILE *o, const sdxl_ckpt *c, const net_configs *nc, int json) {
    const sdxl_st_file *files[SDXL_PART_COUNT];
    size_t nf = 0;
    uint64_t total = 0;
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        const sdxl_st_file *f = sdxl_ckpt_file(c, (sdxl_part)p);
        if (!f) continue;
        total += sdxl_ckpt_params(c, (sdxl_part)p);
        size_t k = 0;
        while (k < nf && files[k] != f) k++;
        if (k == nf) files[nf++] = f;
    }
    char g[40];
    if (json) {
        fputs("{\"path\":", o);
        jstr(o, sdxl_ckpt_path(c));
        fprintf(o, ",\"layout\":\"%s\",\"parts\":{", sdxl_ckpt_layout_name(sdxl_ckpt_layout(c)));
    } else {
        fprintf(o, "path: %s\nlayout: %s\n  %-15s %-10s %8s %15s  %s\n", sdxl_ckpt_path(c),
                sdxl_ckpt_layout_name(sdxl_ckpt_layout(c)), "part", "naming", "tensors", "parameters", "prefix / file");
    }
    int first = 1;
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        if (!sdxl_ckpt_file(c, (sdxl_part)p)) continue;
        print_part(o, c, (sdxl_part)p, json, first);
        first = 0;
    }
    if (json) {
        fputs("},\"config\":{", o);
        print_configs(o, nc, 1);
        sdxl_prediction pr;
        sdxl_err pe = {0};
        if (sdxl_ckpt_prediction(c, &pr, &pe) == SDXL_OK)
            fprintf(o, "},\"prediction\":\"%s\",\"zero_terminal_snr\":%s,\"prediction_source\":\"%s\"", pr.v_pred ? "v" : "epsilon",
                    pr.ztsnr ? "true" : "false", pr.source);
        else
            fputs("}", o);
        fprintf(o, ",\"total_parameters\":%" PRIu64 ",\"other_tensors\":[", total);
        for (size_t i = 0; i < sdxl_ckpt_other_count(c); i++) {
            fputs(i ? "," : "", o);
            jstr(o, sdxl_ckpt_other_at(c, i)->name);
        }
        fputs("],\"files\":[", o);
        for (size_t i = 0; i < nf; i++) {
            fputs(i ? "," : "", o);
            print_file(o, files[i], 1);
        }
        fputs("]}\n", o);
        return;
    }
    fprintf(o, "total parameters: %s\n", grouped(g, sizeof g, total));
    sdxl_prediction pr;
    sdxl_err pe = {0};
    if (sdxl_ckpt_prediction(c, &pr, &pe) == SDXL_OK)
        fprintf(o, "prediction: %s%s (%s)\n", pr.v_pred ? "v" : "epsilon", pr.ztsnr ? ", zero terminal SNR" : "",
                pr.source);
    else
        fprintf(o, "prediction: %s\n", pe.msg);
    print_configs(o, nc, 0);
    if (sdxl_ckpt_other_count(c)) {
        fprintf(o, "tensors outside every part (ignored): %zu\n", sdxl_ckpt_other_count(c));
        for (size_t i = 0; i < sdxl_ckpt_other_count(c); i++) fprintf(o, "  %s\n", sdxl_ckpt_other_at(c, i)->name);
    }
    for (size_t i = 0; i < nf; i++) print_file(o, files[i], 0);
}

/* A valid safetensors file that is not an SDXL checkpoint (a LoRA, a ControlNet, a golden case). */
static void print_plain(FILE *o, const sdxl_file *f, const char *path, const char *why, int json) {
    char sh[256], g[40];
    uint64_t total = 0;
    size_t n = sdxl_file_n_tensors(f);
    for (size_t i = 0; i < n; i++) {
        sdxl_tensor_info t;
        sdxl_file_tensor(f, i, &t);
        uint64_t k = 1;
        for (int d = 0; d < t.ndim; d++) k *= (uint64_t)t.shape[d];
        total += k;
    }
    if (json) {
        fputs("{\"path\":", o);
        jstr(o, path);
        fputs(",\"layout\":null,\"not_a_checkpoint\":", o);
        jstr(o, why);
        fprintf(o, ",\"total_parameters\":%" PRIu64 ",\"tensors_count\":%zu,\"metadata\":{", total, n);
        for (size_t i = 0; i < sdxl_file_n_metadata(f); i++) {
            const char *k, *v;
            sdxl_file_metadata(f, i, &k, &v);
            fputs(i ? "," : "", o);
            jstr(o, k);
            fputc(':', o);
            jstr(o, v);
        }
        fputs("},\"tensors\":[", o);
    } else {
        fprintf(o, "path: %s\nlayout: none (valid safetensors, not an SDXL checkpoint: %s)\ntensors: %zu, parameters: %s\n",
                path, why, n, grouped(g, sizeof g, total));
        if (sdxl_file_n_metadata(f)) fprintf(o, "metadata:\n");
        for (size_t i = 0; i < sdxl_file_n_metadata(f); i++) {
            const char *k, *v;
            sdxl_file_metadata(f, i, &k, &v);
            fprintf(o, "  %s: %s\n", k, v);
        }
        fprintf(o, "tensors (data order):\n");
    }
    for (size_t i = 0; i < n; i++) {
        sdxl_tensor_info t;
        sdxl_file_tensor(f, i, &t);
        shape_text(sh, sizeof sh, t.ndim, t.shape);
        if (json) {
            fputs(i ? ",{\"name\":" : "{\"name\":", o);
            jstr(o, t.name);
            fprintf(o, ",\"dtype\":\"%s\",\"shape\":%s}", t.dtype, sh);
        } else {
            fprintf(o, "  %-4s %-20s %s\n", t.dtype, sh, t.name);
        }
    }
    if (json) fputs("]}\n", o);
}

/* A LoRA / LyCORIS file: format, modules per network and kind, ranks, alphas, hash, training metadata. */
static void print_lora(FILE *o, sdxl_lora_file *l, int json) {
    sdxl_lora_info i;
    sdxl_lora_get_info(l, &i);
    const char *h = sdxl_lora_hash(l);
    const sdxl_st_file *st = sdxl_lora_st(l);
    if (json) {
        fprintf(o, "{\"kind\":\"lora\",\"format\":");
        jstr(o, i.format);
        fprintf(o, ",\"modules\":%d,\"unet\":%d,\"te1\":%d,\"te2\":%d,\"other\":%d,\"rank_min\":%d,\"rank_max\":%d",
                i.n_modules, i.per_net[0], i.per_net[1], i.per_net[2], i.n_other, i.rank_min, i.rank_max);
        if (i.n_alpha) fprintf(o, ",\"alpha_min\":%g,\"alpha_max\":%g", i.alpha_min, i.alpha_max);
        fprintf(o, ",\"dora\":%d,\"kinds\":{", i.n_dora);
        for (int k = 0, first = 1; k < SDXL_LORA_KINDS; k++)
            if (i.per_kind[k]) {
                fprintf(o, "%s\"%s\":%d", first ? "" : ",", sdxl_lora_kind_name((sdxl_lora_kind)k), i.per_kind[k]);
                first = 0;
            }
        fprintf(o, "},\"sha256\":\"%s\",\"metadata\":{", h);
        for (size_t k = 0, first = 1; k < sdxl_st_meta_count(st); k++) {
            const char *key, *v;
            sdxl_st_meta_at(st, k, &key, &v);
            fprintf(o, "%s", first ? "" : ",");
            jstr(o, key);
            fprintf(o, ":");
            jstr(o, v);
            first = 0;
        }
        fprintf(o, "}}\n");
        return;
    }
    fprintf(o, "LoRA:      %s\nformat:    %s\nmodules:   %d (unet %d, te1 %d, te2 %d, other %d)\n", sdxl_lora_path(l),
            i.format, i.n_modules, i.per_net[0], i.per_net[1], i.per_net[2], i.n_other);
    fprintf(o, "kinds:    ");
    for (int k = 0; k < SDXL_LORA_KINDS; k++)
        if (i.per_kind[k]) fprintf(o, " %s %d", sdxl_lora_kind_name((sdxl_lora_kind)k), i.per_kind[k]);
    if (i.n_dora) fprintf(o, " (DoRA %d)", i.n_dora);
    fprintf(o, "\n");
    if (i.rank_max) fprintf(o, "rank:      %d..%d\n", i.rank_min, i.rank_max);
    if (i.n_alpha) fprintf(o, "alpha:     %g..%g (%d modules)\n", i.alpha_min, i.alpha_max, i.n_alpha);
    else fprintf(o, "alpha:     none (alpha = rank)\n");
    fprintf(o, "hash:      %.12s (A1111 Lora hashes; sha256 of the tensor data %s)\n", h, h);
    for (size_t k = 0; k < sdxl_st_meta_count(st); k++) {
        const char *key, *v;
        sdxl_st_meta_at(st, k, &key, &v);
        size_t n = strlen(v);
        fprintf(o, "  %-28s %.*s%s\n", key, n > 120 ? 120 : (int)n, v, n > 120 ? "..." : "");
    }
}

static int usage(FILE *o) {
    fprintf(o, "usage: sdxl info FILE_OR_FOLDER [--json]\n\n"
               "Validates a .safetensors file or a diffusers folder and lists its layout, parts\n"
               "(naming, tensor and parameter counts), metadata and tensors (name, dtype, shape).\n"
               "Exit status: 0 valid, 1 invalid or unreadable (message on stderr), 2 usage error.\n");
    return o == stdout ? 0 : 2;
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return usage(stdout);
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "sdxl info: unknown option '%s'\n", argv[i]);
            return usage(stderr);
        } else if (path) {
            fprintf(stderr, "sdxl info: one path only\n");
            return usage(stderr);
        } else {
            path = argv[i];
        }
    }
    if (!path) return usage(stderr);

    sdxl_err e = {0};
    sdxl_ckpt *c = NULL;
    int st = sdxl_ckpt_open(path, &c, &e);
    if (st == SDXL_OK) {
        net_configs nc;
        st = detect_configs(c, &nc, &e);
        if (st == SDXL_OK) print_ckpt(stdout, c, &nc, json);
        else fprintf(stderr, "sdxl info: %s: %s\n", path, e.msg);
        sdxl_ckpt_close(c);
        return st == SDXL_OK ? 0 : 1;
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "sdxl info: %s\n", e.msg);
        return 1;
    }
    sdxl_lora_file *lf = NULL;
    sdxl_err le = {0};
    if (sdxl_lora_open(path, &lf, &le) == SDXL_OK) {
        print_lora(stdout, lf, json);
        sdxl_lora_close(lf);
        return 0;
    }
    /* Not a checkpoint: fall back to the plain, still fully validated, file view. */
    sdxl_ctx *ctx = NULL;
    if (sdxl_ctx_new(NULL, &ctx) != SDXL_OK) {
        fprintf(stderr, "sdxl info: cannot create a context\n");
        return 1;
    }
    sdxl_file *f = NULL;
    int rc = 0;
    if (sdxl_file_open(ctx, path, &f) != SDXL_OK) {
        fprintf(stderr, "sdxl info: %s\n", sdxl_errmsg(ctx));
        rc = 1;
    } else {
        print_plain(stdout, f, path, e.msg, json);
        sdxl_file_free(f);
    }
    sdxl_ctx_free(ctx);
    return rc;
}
